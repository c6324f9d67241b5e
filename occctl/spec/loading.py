"""Spec files -> validated runs: YAML read strictly, ``--set`` overrides, model presets, a study's ``matrix:``."""

from __future__ import annotations

import copy
import itertools
import math
import re
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from occctl.errors import SpecError, did_you_mean
from occctl.spec.launcher import LauncherSpec, validate_launcher
from occctl.spec.messages import describe_error
from occctl.spec.schema import Spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)



# `--set model=<name>` (or `model: <name>` in a file): a named model preset, expanded into the explicit keys it
# sets (printed by --dry-run, recorded in the run's spec.yaml). A later --set still overrides any of them.
# `tiny_cpu` runs any spec's task on a config-built tiny model within a 2-core budget: on a dataset task the
# tokenizer is trained on the task's data (occctl.tasks.tokenizer), so e.g. the math specs' 3-step CPU check is
#   occctl run specs/qwen25_math_1p5b_occ.yaml --set model=tiny_cpu --set train.steps=3
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"model": {"preset": "tiny"}},
    # the tiny preset with heads of 32 (vLLM's CPU attention) and its MTP head as vLLM runs it. It learns 3-digit
    # addition far less than `tiny` in the warm-up: held-out avg@8 0.008 after 550 steps (also 0.008 at
    # warmup.lr 1e-3, 0.009 after 1100 steps), where `tiny` reaches 0.06-0.26; its head drafts 0.60 of tokens.
    # The other shapes with heads of 32 tried learn no better (2026-12-06, 1 thread): `tiny` with 2 heads (64 wide)
    # 0.002 after 550 steps and 0.011 after 1100; 128 wide with 4 heads 0.010 after 550. So `tiny` keeps its heads
    # of 16, which vLLM's CPU attention cannot serve (a GPU build's attention backends: unchecked)
    "tiny_vllm": {
        "model": {"preset": "tiny", "tiny": {"hidden_size": 96, "num_layers": 4, "num_heads": 3,
                                             "intermediate_size": 384}},
        "mtp.zero_first_position": True,
    },
    "tiny_cpu": {
        "model": {"preset": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                             "intermediate_size": 128}},  # 2 heads of 32 (vLLM's CPU attention)
        "warmup.enabled": False,
        "train.prompts_per_generation": 4, "train.optimizer_steps_per_generation": 2,
        "train.micro_batches_per_step": 1, "train.max_new_tokens": 32, "algorithm.samples_per_prompt": 4,
        "task.max_prompt_tokens": 256, "task.heldout_limit": 8, "task.overlong.buffer_tokens": 8,
        "eval.samples_per_problem": 2, "eval.every_steps": 0,
        "backend_options": {},
    },
}


def expand_model_preset(raw: dict[str, Any], name: str, where: str) -> None:
    """``model: <name>`` -> the preset's keys set in ``raw`` (``MODEL_PRESETS``)."""
    if name not in MODEL_PRESETS:
        raise SpecError(f"{where}: unknown model preset {name!r}{did_you_mean(name, MODEL_PRESETS)}; valid: "
                        f"{', '.join(MODEL_PRESETS)} (or a mapping, e.g. model: {{path: Qwen/Qwen2.5-Math-1.5B}})")
    for key, value in MODEL_PRESETS[name].items():
        if key.startswith("task.") and (raw.get("task") or {}).get("name") != "dataset":
            continue  # keys of the dataset task only
        set_dotted(raw, key, copy.deepcopy(value), where=where)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, override (``key.path=value``, values parsed as YAML) and validate a spec file of one run."""
    specs = load_specs(path, overrides)
    if len(specs) != 1:
        raise SpecError(f"{path}: this spec has a matrix of {len(specs)} runs; here a single run is needed",
                        hint="`occctl run` runs every cell of a matrix; pick one with --set on a copy without matrix")
    return specs[0]


def load_specs(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> list[Spec]:
    """A spec file -> its runs (``load_study`` without the launcher)."""
    return load_study(path, overrides)[0]


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[list[Spec], LauncherSpec]:
    """A spec file -> its runs and its ``launcher:``. The runs: one, or one per cell of its ``matrix:``
    (the cartesian product of the lists).

    ``matrix: {mtp.regime: [detach, occ], train.seed: [0, 1]}`` gives 4 runs named
    ``<name>.regime-detach.seed-0`` etc., all with ``group: <name>`` and ``cell`` = their matrix values.
    ``--set`` overrides apply to every cell; a key cannot be both overridden and varied.
    """
    path = Path(path)
    raw = read_spec_file(path)
    matrix = raw.pop("matrix", None)
    if isinstance(raw.get("model"), str):
        expand_model_preset(raw, raw["model"], f"{path}: model")
    for item in overrides:
        key, value = parse_override(item)
        if matrix and key in matrix:
            raise SpecError(f"--set {item}: {key} is varied by the matrix of {path}")
        if key == "model" and isinstance(value, str):
            expand_model_preset(raw, value, f"--set {item}")
            continue
        set_dotted(raw, key, value, where=f"--set {item}")
    raw.setdefault("name", path.stem)
    launcher = validate_launcher(raw.pop("launcher", {}), str(path))
    if matrix is None:
        return [validate_spec(raw, str(path))], launcher
    keys, values, bundles = _check_matrix(matrix, str(path))
    specs, seen = [], set()
    for combo in itertools.product(*values):
        cell = dict(zip(keys, combo))
        cell_raw = copy.deepcopy(raw)
        for key, value in cell.items():
            for target, setting in (bundles[key][value].items() if key in bundles else [(key, value)]):
                set_dotted(cell_raw, target, setting, where=f"{path}: matrix.{key}")
        slug = ".".join(f"{key.rsplit('.', 1)[-1]}-{_slug(value)}" for key, value in cell.items())
        cell_raw.update(name=f"{raw['name']}.{slug}", group=raw["name"], cell=cell)
        spec = validate_spec(cell_raw, f"{path} (matrix cell {slug})")
        if spec.name in seen:
            raise SpecError(f"{path}: two matrix cells are both named {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    return specs, launcher


def _check_matrix(matrix: Any, source: str) -> tuple[list[str], list[list[Any]], dict[str, dict[str, Any]]]:
    """-> keys, their values, and the bundles of named keys (``variant: {label: {key: value, ...}}``)."""
    example = "e.g. {mtp.regime: [detach, occ], train.seed: [0, 1]}"
    if not isinstance(matrix, dict) or not matrix:
        raise SpecError(f"{source}: matrix must be a non-empty mapping of spec keys to lists of values, {example}")
    dotted = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
    keys, values, bundles = [], [], {}
    for key, options in matrix.items():
        if not isinstance(key, str) or not re.fullmatch(dotted, key):
            raise SpecError(f"{source}: matrix key {key!r} is not a dotted spec key")
        if key.split(".")[0] in ("name", "group", "cell", "matrix"):
            raise SpecError(f"{source}: matrix.{key}: this key cannot be varied")
        if isinstance(options, dict) and options:  # named bundles: label -> {dotted key: value}
            for label, bundle in options.items():
                if not isinstance(bundle, dict) or not bundle or not all(
                        isinstance(k, str) and re.fullmatch(dotted, k) for k in bundle):
                    raise SpecError(f"{source}: matrix.{key}.{label} must map dotted spec keys to values")
            bundles[key] = options
            options = list(options)
        if not isinstance(options, list) or not options:
            raise SpecError(f"{source}: matrix.{key} must be a non-empty list of values (or a mapping of "
                            f"labels to settings); got {options!r}"[:200])
        if any(isinstance(v, (dict, list)) for v in options):
            raise SpecError(f"{source}: matrix.{key}: values must be scalars")
        keys.append(key)
        values.append(options)
    if math.prod(len(v) for v in values) > 1000:
        raise SpecError(f"{source}: the matrix has more than 1000 cells")
    return keys, values, bundles


def _slug(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text.replace(".", "p")) if text else "empty"


def read_spec_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file", hint="pass the path to a YAML spec, e.g. specs/tiny_occ.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: YAML nested too deeply") from None
    if data is None:
        raise SpecError(f"{path}: the spec is empty", hint="a spec is a YAML mapping, e.g. `mtp: {regime: occ}`")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping; got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SpecError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set train.steps=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) or parsed is None:
        parsed = value if value.strip().lower() not in ("null", "~") else None
    return key, parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"{where}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


# keys renamed to say their unit: a spec (or a run folder's spec.yaml) that uses the old name still loads
RENAMED_KEYS = {"train.save_every": "train.save_every_steps", "eval.every": "eval.every_steps",
                "mtp.occ.oracle_every": "mtp.occ.oracle_every_steps"}


def validate_spec(raw: dict[str, Any], source: str, *, run_folder: bool = False) -> Spec:
    """``raw`` as a Spec, problems named after ``source``; ``run_folder``: ``raw`` is a run folder's own spec.yaml,
    whose old key names (written before a rename) move without a warning, as there is nothing for the user to change."""
    _rename_old_keys(raw, source, warn=not run_folder)
    try:
        return Spec.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: {describe_error(err)}" for err in e.errors()]
        raise SpecError("\n".join(lines)) from None



def _rename_old_keys(raw: dict[str, Any], source: str, warn: bool) -> None:
    """Moves each ``RENAMED_KEYS`` old key to its new name, with a warning if ``warn``; both given is an error."""
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        new_leaf = new.rsplit(".", 1)[1]
        if new_leaf in node:
            raise SpecError(f"{source}: {old} and {new} are the same key (renamed); drop {old}")
        node[new_leaf] = node.pop(leaf)
        if warn:
            warnings.warn(f"{source}: {old} is now {new}", FutureWarning, stacklevel=2)
