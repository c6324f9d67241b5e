"""The Backend protocol and a lazy registry (name -> "module:Class", imported on first use)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

from occctl.errors import EnvError
from occctl.spec import Spec

BACKENDS = {
    "trl": "backends.trl_backend.adapter:TrlBackend",
    "verl": "backends.verl_backend.adapter:VerlBackend",
}

MetricSink = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Plan:
    spec: Spec
    run_dir: Path
    native_config: dict[str, Any]
    command: tuple[str, ...] = ()  # the launch command, for backends that start a process (verl)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    heldout_before: dict[str, float] = field(default_factory=dict)
    heldout_after: dict[str, float] = field(default_factory=dict)
    warm_start: Path | None = None


class Backend(Protocol):
    name: ClassVar[str]

    def check(self, spec: Spec) -> list[str]: ...

    def prepare(self, spec: Spec, run_dir: Path) -> Plan: ...

    def train(self, plan: Plan, sink: MetricSink, progress: Any = None) -> TrainResult: ...


def get_backend(name: str) -> Backend:
    target = BACKENDS.get(name)
    if target is None:
        raise EnvError(f"backend {name!r} is not available in this version of occctl",
                       hint=f"available backends: {', '.join(BACKENDS)}")
    module, cls = target.split(":")
    try:
        return getattr(importlib.import_module(module), cls)()
    except ImportError as e:
        raise EnvError(f"backend {name!r} cannot be imported: {e}",
                       hint="install what it needs (verl: backends/verl_backend/install_verl.sh)") from None
