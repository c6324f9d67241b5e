"""Validate veRL overrides on CPU, as ``main_ppo`` would before starting Ray: Hydra compose against the shipped
``ppo_trainer`` config, the types of the spec's raw overrides (veRL's config dataclasses, else the defaults of its
generated ``_generated_ppo_megatron_trainer.yaml``), the dataclass builds of the actor / rollout / MTP / algorithm
nodes, then veRL's own ``validate_config``. Nothing is downloaded and no model is loaded.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

from occctl.errors import SpecError

from backends.verl_backend.options import override_key

GENERATED = "_generated_ppo_megatron_trainer.yaml"
HINT = "fix the spec (or the raw backend_options.overrides); veRL's config reference: " \
       "verl/trainer/config/_generated_ppo_megatron_trainer.yaml"


@dataclass(frozen=True)
class Validation:
    verl_version: str | None  # None: veRL is not installed here, nothing was validated
    config: dict[str, Any] | None  # the composed, resolved veRL config
    skipped: str | None = None  # why validation did not run


def verl_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("verl")
    except metadata.PackageNotFoundError:
        return None


def validate_overrides(overrides: list[str], source: str, raw: list[str] = ()) -> Validation:
    """Compose and check; SpecError (exit 2) with veRL's own message when veRL rejects the config, or naming the
    raw override (one of ``raw``) whose value has the wrong type for its key."""
    version = verl_version()
    if version is None:
        return Validation(None, None, skipped="veRL is not installed here (install_verl.sh in its own venv)")
    with _hf_offline():  # belt and braces: nothing below may touch the network
        return _validate(overrides, source, version, list(raw))


@contextlib.contextmanager
def _hf_offline():
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _validate(overrides: list[str], source: str, version: str, raw: list[str]) -> Validation:
    import hydra
    import omegaconf
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with contextlib.redirect_stdout(io.StringIO()):  # veRL prints banners and notices; stdout carries the plan
        import verl
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import omega_conf_to_dataclass, validate_config

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    rejected = (hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException, AssertionError, ValueError,
                TypeError, KeyError)
    stage = "Hydra compose"
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=list(overrides))
        wrong = override_type_problems(cfg, raw, os.path.join(config_dir, GENERATED))
        if wrong:
            raise SpecError("\n".join(f"{source}: backend_options.overrides: {line}" for line in wrong),
                            hint=HINT)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Disabled critic as algorithm.adv_estimator != gae"
            for node in ("actor_rollout_ref.actor", "actor_rollout_ref.rollout", "actor_rollout_ref.model.mtp",
                         "algorithm"):
                stage = f"building {node}"
                omega_conf_to_dataclass(OmegaConf.select(cfg, node))
            stage = "verl.utils.config.validate_config"
            validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except rejected as e:
        raise SpecError(f"{source}: veRL {version} rejected the config ({stage}): {_first_lines(e)}",
                        hint=HINT) from None
    return Validation(version, resolved)


def override_type_problems(cfg, raw: list[str], generated_yaml: str) -> list[str]:
    """Each raw override whose composed value does not have its key's type: the annotation of the field in veRL's
    config dataclass (the node's ``_target_``), else the type of the key's default in the generated YAML."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    generated = OmegaConf.load(generated_yaml)
    problems = []
    for item in raw:
        key = override_key(item)
        if key is None or item.lstrip().startswith("~"):
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        expected, where = _expected_type(cfg, generated, key)
        if expected is not None and not _has_type(value, expected):
            problems.append(f"{key} = {value!r}: veRL takes {_type_name(expected)} there ({where})")
    return problems


def _expected_type(cfg, generated, key: str) -> tuple[Any, str]:
    """(type, where it comes from), or (None, "") when veRL declares none (a new key, an untyped default)."""
    from omegaconf import DictConfig, OmegaConf

    parent, _, field = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):
        hints = _dataclass_hints(target)
        if field in hints:
            return hints[field], f"veRL's {target.rsplit('.', 1)[-1]}.{field}"
    owner = OmegaConf.select(generated, parent) if parent else generated
    if not isinstance(owner, DictConfig) or field not in owner:
        return None, ""
    default = OmegaConf.to_container(owner, resolve=False)[field]
    if default is None or (isinstance(default, str) and default.startswith("${")):
        return None, ""
    kind = float if type(default) in (int, float) else type(default)  # YAML 0 may well be a float
    return kind, f"default {default!r} in veRL's {GENERATED}"


def _dataclass_hints(target: str) -> dict[str, Any]:
    import dataclasses
    import importlib
    import typing

    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    except (ImportError, AttributeError, NameError, TypeError):
        return {}


def _has_type(value: Any, expected: Any) -> bool:
    """Strict (a string is not a number, 1 is not a bool, 10.5 is not an int; an int is a float); a number may
    stand for a string (Hydra reads ``name=2024`` as an int). Types pydantic cannot check pass."""
    from pydantic import PydanticSchemaGenerationError, TypeAdapter, ValidationError

    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        TypeAdapter(expected).validate_python(value, strict=True)
    except ValidationError:
        return False
    except (PydanticSchemaGenerationError, TypeError):
        return True
    return True


def _type_name(expected: Any) -> str:
    return expected.__name__ if isinstance(expected, type) else str(expected).replace("typing.", "")


def _first_lines(e: BaseException, limit: int = 6) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, AssertionError) and not str(e).strip():
        text = "assertion failed"
    lines = [line for line in text.splitlines() if line.strip()][:limit]
    return " | ".join(lines)
