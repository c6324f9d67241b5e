"""Concurrent runs share one warm-up: the second waits on the first's lock and reuses its cache."""

import fcntl
import json
import threading
from pathlib import Path

import occctl.warmup as warmup
from occctl.spec import load_spec

SPEC = Path(__file__).resolve().parents[2] / "specs" / "tiny_occ.yaml"


def test_a_second_run_waits_for_the_first_warm_up_and_does_not_train_it_again(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_CACHE_DIR", str(tmp_path))
    trained = []
    monkeypatch.setattr(warmup, "_train_warm_start", lambda spec, final, progress: trained.append(final))
    spec = load_spec(SPEC)
    final = warmup.warm_start_dir(spec)
    final.parent.mkdir(parents=True)
    result: list[Path] = []
    with final.with_name(f"{final.name}.lock").open("w") as held:  # "another run" is training it
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.append(warmup.ensure_warm_start(spec)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not result, "the second run did not wait for the lock"
        final.mkdir()
        (final / warmup.DONE).write_text(json.dumps({"key": final.name}))  # the first run finishes
    waiter.join(timeout=10.0)
    assert result == [final] and trained == [], "the waiting run trained the warm-up again"


def test_a_missing_warm_up_is_trained_once_under_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_CACHE_DIR", str(tmp_path))
    spec = load_spec(SPEC)

    def train(spec, final, progress):
        with final.with_name(f"{final.name}.lock").open("w") as probe:  # held by us while training
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
        assert held, "the warm-up was trained without holding its lock"
        final.mkdir()
        (final / warmup.DONE).write_text("{}")
        trained.append(final)

    trained: list[Path] = []
    monkeypatch.setattr(warmup, "_train_warm_start", train)
    first, second = warmup.ensure_warm_start(spec), warmup.ensure_warm_start(spec)
    assert first == second == warmup.warm_start_dir(spec) and len(trained) == 1
