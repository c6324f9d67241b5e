"""Validate veRL overrides on CPU, as ``main_ppo`` would before starting Ray: Hydra compose against the shipped
``ppo_trainer`` config, the dataclass builds of the actor / rollout / MTP / algorithm nodes, then veRL's own
``validate_config``. Nothing is downloaded and no model is loaded.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

from occctl.errors import SpecError

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


def validate_overrides(overrides: list[str], source: str) -> Validation:
    """Compose and check; SpecError (exit 2) with veRL's own message when veRL rejects the config."""
    version = verl_version()
    if version is None:
        return Validation(None, None, skipped="veRL is not installed here (install occctl's verl extra)")
    with _hf_offline():  # belt and braces: nothing below may touch the network
        return _validate(overrides, source, version)


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


def _validate(overrides: list[str], source: str, version: str) -> Validation:
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


def _first_lines(e: BaseException, limit: int = 6) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, AssertionError) and not str(e).strip():
        text = "assertion failed"
    lines = [line for line in text.splitlines() if line.strip()][:limit]
    return " | ".join(lines)
