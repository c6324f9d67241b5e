from pathlib import Path

import pytest
import yaml

from occctl.errors import SpecError
from occctl.spec import CLIP_DEFAULTS, flatten, load_spec, spec_schema, spec_to_dict

SPECS = sorted(Path(__file__).resolve().parents[2].joinpath("specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    from occctl.spec import load_specs

    specs = load_specs(path)
    if len(specs) == 1 and specs[0].group is None:
        assert specs[0].name == path.stem
    else:
        assert all(s.group == path.stem and s.name.startswith(f"{path.stem}.") for s in specs)
    assert path.read_text().startswith("#"), "every shipped spec opens with a comment"


def test_matrix_expands_lists_and_named_bundles(tmp_path):
    from occctl.spec import load_specs

    p = _write(tmp_path, "matrix:\n  variant:\n    clip: {mtp.occ.clip_negative: true}\n"
                         "    lp2: {mtp.occ.lambda_plus: 2.0, mtp.coef: 0.3}\n  train.seed: [0, 1]\n"
                         "train: {steps: 7}\n", name="study.yaml")
    specs = load_specs(p, ["train.lr=0.001"])
    assert [s.name for s in specs] == ["study.variant-clip.seed-0", "study.variant-clip.seed-1",
                                       "study.variant-lp2.seed-0", "study.variant-lp2.seed-1"]
    assert all(s.group == "study" and s.train.steps == 7 and s.train.lr == 0.001 for s in specs)
    assert specs[0].mtp.occ.clip_negative and not specs[2].mtp.occ.clip_negative
    assert specs[3].mtp.occ.lambda_plus == 2.0 and specs[3].mtp.coef == 0.3 and specs[3].train.seed == 1
    assert specs[3].cell == {"variant": "lp2", "train.seed": 1}
    with pytest.raises(SpecError, match="single run"):
        load_spec(p)


@pytest.mark.parametrize("matrix, message", [
    ("matrix: []", "non-empty mapping"),
    ("matrix: {train.seed: 3}", "non-empty list"),
    ("matrix: {train.seed: []}", "non-empty list"),
    ("matrix: {name: [a, b]}", "cannot be varied"),
    ("matrix: {mtp.regime: [detach, sometimes]}", "mtp.regime"),
    ("matrix: {mtp.regimen: [detach]}", "did you mean 'regime'"),
    ("matrix: {v: {a: 3}}", "must map dotted spec keys"),
    ("matrix: {train.seed: [[1]]}", "scalars"),
])
def test_bad_matrices_are_spec_errors(tmp_path, matrix, message):
    from occctl.spec import load_specs

    with pytest.raises(SpecError, match=message):
        load_specs(_write(tmp_path, matrix + "\n"))


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_overrides_are_typed_and_name_defaults_to_stem(tmp_path):
    p = _write(tmp_path, "mtp: {regime: occ}\n", "my_run.yaml")
    spec = load_spec(p, ["train.steps=5", "mtp.occ.clip_negative=true", "mtp.coef=0.5", "name=smoke"])
    assert spec.train.steps == 5 and spec.mtp.occ.clip_negative is True and spec.mtp.coef == 0.5
    assert spec.name == "smoke"
    assert load_spec(p).name == "my_run"


def test_algorithm_clip_defaults():
    for algo, (low, high) in CLIP_DEFAULTS.items():
        from occctl.spec import Spec
        spec = Spec.model_validate({"name": "x", "algorithm": {"name": algo}})
        assert (spec.algorithm.clip_low, spec.algorithm.clip_high) == (low, high)


@pytest.mark.parametrize("text, overrides, expected", [
    ("mtp: {regime: foo}\n", [], "mtp.regime: Input should be 'detach', 'ce', 'policy' or 'occ'; got 'foo'"),
    ("mtp: {regmie: occ}\n", [], "mtp.regmie: unknown key (did you mean 'regime'?)"),
    ("train: {steps: many}\n", [], "train.steps: Input should be a valid integer"),
    ("train: {steps: -3}\n", [], "train.steps: Input should be greater than or equal to 1; got -3"),
    ("algorithm: {samples_per_prompt: 1}\n", [], "algorithm.samples_per_prompt: Input should be greater than or equal to 2"),
    ("model: {path: ./does/not/exist}\n", [], "model: model.path does not exist: ./does/not/exist"),
    ("{}\n", ["train.prompts_per_generation=3", "algorithm.samples_per_prompt=3"], "must split evenly"),
    ("{}\n", ["name=../escape"], "name: String should match pattern"),
    ("bogus: 1\n", [], "bogus: unknown key"),
])
def test_bad_specs_name_the_field(tmp_path, text, overrides, expected):
    p = _write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(p, overrides)
    assert e.value.exit_code == 2
    assert expected in e.value.message
    assert e.value.message.startswith(str(p))
    assert len(e.value.message.splitlines()) == 1


@pytest.mark.parametrize("content, expected", [
    (b"", "the spec is empty"),
    (b"- a\n- b\n", "must be a YAML mapping"),
    (b"mtp: {regime: [\n", "invalid YAML at line"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_unreadable_specs(tmp_path, content, expected):
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    with pytest.raises(SpecError, match=expected):
        load_spec(p)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    p = _write(tmp_path, "{}\n")
    with pytest.raises(SpecError, match="KEY=VALUE"):
        load_spec(p, ["train.steps"])


def test_flatten_and_schema(tmp_path):
    spec = load_spec(_write(tmp_path, "{}\n"))
    flat = flatten(spec_to_dict(spec))
    assert flat["mtp.occ.lambda_plus"] == 1.0 and flat["train.steps"] == 200
    schema = spec_schema()
    assert "mtp" in schema["properties"] and schema["additionalProperties"] is False


def test_reference_preset_expands_into_explicit_keys(tmp_path):
    spec = load_spec(_write(tmp_path, "mtp: {regime: occ, occ: {preset: reference}}\n"))
    occ, clip = spec.mtp.occ, spec.mtp.policy_clip
    assert (occ.estimator, occ.mask, occ.scope, occ.lambda_plus, occ.dp_reduce) == (
        "mean_of_ratios", "padded", "micro_batch", 0.1, False)
    assert (clip.dual_clip, clip.log_ratio_clamp) == (10.0, 20.0)
    flat = flatten(spec_to_dict(spec))  # what --dry-run and spec.yaml show
    assert flat["mtp.occ.preset"] == "reference" and flat["mtp.occ.mask"] == "padded"
    again = load_spec(_write(tmp_path, yaml.safe_dump(spec_to_dict(spec)), name="again.yaml"))
    assert again == spec  # a resolved spec (its name included) re-validates to itself


def test_paper_defaults_stay_the_default(tmp_path):
    occ = load_spec(_write(tmp_path, "mtp: {regime: occ}\n")).mtp.occ
    assert (occ.preset, occ.estimator, occ.mask, occ.scope, occ.lambda_plus, occ.dp_reduce) == (
        None, "ratio_of_sums", "response", "step", 1.0, True)


@pytest.mark.parametrize("body, field", [
    ("mtp: {regime: detach, occ: {estimator: oracle}}\n", "mtp.occ.estimator"),
    ("mtp: {regime: policy, occ: {estimator: oracle}}\n", "mtp.occ.estimator"),
    ("mtp: {occ: {estimator: oracle, ema: 0.5}}\n", "mtp.occ.ema"),
    ("mtp: {occ: {preset: paper}}\n", "mtp.occ.preset"),
    ("mtp: {occ: {preset: reference, estimator: ratio_of_sums}}\n", "mtp.occ.estimator"),
    ("mtp: {occ: {preset: reference}, policy_clip: {dual_clip: 3.0}}\n", "mtp.policy_clip.dual_clip"),
    ("mtp: {policy_clip: {dual_clip: 0.5}}\n", "mtp.policy_clip.dual_clip"),
])
def test_bad_estimator_settings_name_the_field(tmp_path, body, field):
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, body))
    message = str(e.value)
    assert len(message.splitlines()) == 1 and field in message, message


def test_preset_with_agreeing_explicit_keys_is_fine(tmp_path):
    spec = load_spec(_write(tmp_path, "mtp: {occ: {preset: reference, lambda_plus: 0.1, scope: micro_batch}}\n"))
    assert spec.mtp.occ.estimator == "mean_of_ratios"


@pytest.mark.parametrize("overrides, message", [
    (["train.speculative=true"], "train.speculative drafts with the MTP head, and mtp.enabled is false (no head)"),
    (["mtp.draft_loss=soft_ce"], "mtp.draft_loss=soft_ce trains the MTP head, and mtp.enabled is false (no head)"),
])
def test_drafting_without_a_head_is_one_line(tmp_path, overrides, message):
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, "mtp: {enabled: false}\n"), overrides)
    assert str(e.value).endswith(message) and "\n" not in str(e.value)


def test_verl_refuses_the_trl_only_drafter_keys(tmp_path):
    from backends.verl_backend.adapter import spec_problems
    from backends.verl_backend.options import parse_options

    (tmp_path / "m").mkdir()
    spec = load_spec(_write(tmp_path, f"backend: verl\nmodel: {{path: {tmp_path / 'm'}}}\n"),
                     ["train.speculative=true", "mtp.draft_loss=ce", "train.rollout_engine=vllm"])
    options = parse_options({"data": {"train": "math6/train/x.jsonl", "val": "math6/aime24.jsonl"}})
    problems = spec_problems(spec, options)
    assert any(p.startswith("train.speculative:") for p in problems)
    assert any(p.startswith("mtp.draft_loss:") for p in problems)
    assert any(p.startswith("train.rollout_engine: vllm is the trl backend's") for p in problems)


def test_keys_renamed_to_name_their_unit_still_load(tmp_path):
    """A spec (or an older run's spec.yaml) with ``train.save_every`` etc. loads as the new key, with a warning;
    the old and the new name together are an error."""
    text = "train: {save_every: 4}\neval: {every: 2}\nmtp: {occ: {oracle_every: 3}}\n"
    with pytest.warns(FutureWarning, match="train.save_every is now train.save_every_steps"):
        spec = load_spec(_write(tmp_path, text))
    assert (spec.train.save_every_steps, spec.eval.every_steps, spec.mtp.occ.oracle_every_steps) == (4, 2, 3)
    with pytest.warns(FutureWarning, match="eval.every is now eval.every_steps"):
        assert load_spec(_write(tmp_path, "name: x\n"), ["eval.every=5"]).eval.every_steps == 5
    with pytest.raises(SpecError, match="same key"):
        load_spec(_write(tmp_path, "train: {save_every: 4, save_every_steps: 4}\n"))


def test_old_key_names_warn_in_a_users_spec_yaml_but_not_in_a_run_folders(tmp_path, monkeypatch):
    """The run folder's reader says it reads a run folder: a user's own file named spec.yaml warns like any other
    spec, while a run folder's spec.yaml (written before the rename) loads silently."""
    import warnings

    from occctl.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "name: x\ntrain: {save_every: 4}\n", name="spec.yaml")
    with pytest.warns(FutureWarning, match="spec.yaml: train.save_every is now train.save_every_steps"):
        assert load_spec("spec.yaml").train.save_every_steps == 4
    run = RunDir(tmp_path / "x")
    run.path.mkdir()
    run.spec_file.write_text("name: x\ntrain: {save_every: 4}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.read_spec().train.save_every_steps == 4
