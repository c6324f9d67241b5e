"""``warmup.target``: the warm-up stops at the first held-out check inside the band, so every machine starts RL from
the same accuracy; a band never reached, or jumped over between two checks, is a one-line error."""

import json
from pathlib import Path

import pytest

import occctl.warmup as warmup
from occctl.errors import RunError, SpecError
from occctl.spec import load_spec

SPEC = Path(__file__).resolve().parents[2] / "specs" / "tiny_occ.yaml"
SMALL = ["warmup.steps=40", "warmup.examples_per_step=8", "warmup.check_every_steps=10"]


def _scripted_heldout(monkeypatch, accuracies: list[float]) -> list[int]:
    """evaluate_heldout returns ``accuracies`` in turn (the last one again at the end); returns the call log."""
    calls: list[int] = []

    def fake(loaded, problems, *args, **kwargs):
        calls.append(len(calls))
        return {"avg_at_k": accuracies[min(len(calls) - 1, len(accuracies) - 1)], "pass_at_k": 0.0, "greedy": 0.0}

    monkeypatch.setattr(warmup, "evaluate_heldout", fake)
    return calls


def test_the_warm_up_stops_at_the_first_check_in_the_band(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_CACHE_DIR", str(tmp_path))
    _scripted_heldout(monkeypatch, [0.05, 0.2, 0.3, 0.3])
    spec = load_spec(SPEC, SMALL + ["warmup.target=[0.25, 0.35]"])
    done = json.loads((warmup.ensure_warm_start(spec) / warmup.DONE).read_text())
    assert done["steps"] == 30, done  # checks at 10 (0.05), 20 (0.2), 30 (0.3: in the band)
    assert [c["step"] for c in done["checks"]] == [10, 20, 30] and done["heldout"]["avg_at_k"] == 0.3
    assert done["machine"]["cpu"] and done["machine"]["packages"]["torch"]


@pytest.mark.parametrize("accuracies, message", [
    ([0.1, 0.5], "went from 0.1000 at step 10 to 0.5000 at step 20, over warmup.target [0.25, 0.35]"),
    ([0.1, 0.1, 0.1, 0.1, 0.1], "0.1000 after 40 steps, not in warmup.target [0.25, 0.35]"),
])
def test_a_band_jumped_over_or_never_reached_is_an_error(tmp_path, monkeypatch, accuracies, message):
    monkeypatch.setenv("OCCCTL_CACHE_DIR", str(tmp_path))
    _scripted_heldout(monkeypatch, accuracies)
    spec = load_spec(SPEC, SMALL + ["warmup.target=[0.25, 0.35]"])
    with pytest.raises(RunError, match=message.replace("[", r"\[").replace("]", r"\]")):
        warmup.ensure_warm_start(spec)
    assert not (warmup.warm_start_dir(spec) / warmup.DONE).exists()  # nothing cached


def test_the_target_is_in_the_cache_key_and_a_fixed_count_keeps_its_key():
    fixed, banded = load_spec(SPEC), load_spec(SPEC, ["warmup.target=[0.25, 0.35]"])
    other = load_spec(SPEC, ["warmup.target=[0.3, 0.4]"])
    assert len({warmup.warmup_key(fixed), warmup.warmup_key(banded), warmup.warmup_key(other)}) == 3
    assert warmup.warmup_key(fixed) == "aca4f5de6acf92a7"  # the embedded default's cache from before targets


@pytest.mark.parametrize("band", ["[0.4, 0.3]", "[0.2, 1.5]", "[0.3]"])
def test_a_malformed_band_is_a_spec_error(band):
    with pytest.raises(SpecError, match="warmup.target"):
        load_spec(SPEC, [f"warmup.target={band}"])
