"""A rerun is refused only for a different spec, not for a spec.yaml written before keys were added to the schema."""

from pathlib import Path

import yaml

from occctl.rundir import RunDir
from occctl.runner import spec_changed
from occctl.spec import load_spec, spec_to_dict

SPEC = Path(__file__).resolve().parents[2] / "specs" / "tiny_occ.yaml"


def _saved(spec, edit):
    data = spec_to_dict(spec)
    edit(data)
    run = RunDir.named(spec.name)
    run.path.mkdir(parents=True)
    run.spec_file.write_text(yaml.safe_dump(data, sort_keys=False))


def test_keys_added_since_the_run_started_are_filled_with_defaults(results_dir):
    spec = load_spec(SPEC, ["name=old"])
    _saved(spec, lambda d: (d["mtp"].pop("policy_clip"), d["train"].pop("optimizer")))  # as an older occctl wrote it
    assert not spec_changed(spec)


def test_a_changed_value_is_a_different_spec(results_dir):
    spec = load_spec(SPEC, ["name=changed"])
    _saved(spec, lambda d: d["train"].update(lr=1e-3))
    assert spec_changed(spec)


def test_an_unreadable_or_unknown_key_spec_is_a_different_spec(results_dir):
    spec = load_spec(SPEC, ["name=unknown"])
    _saved(spec, lambda d: d["train"].update(no_such_key=1))
    assert spec_changed(spec)
