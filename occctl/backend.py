"""The Backend protocol and a lazy registry (name -> "module:Class", imported on first use).

Adding a backend
----------------
1. Write a class with the methods of ``Backend`` below and ``name``, its registry key (no base class; share code by
   calling ``occctl`` functions). Put it in ``backends/<name>_backend/adapter.py``, its spec -> native config translation in
   ``translate.py`` and every call into ``occctl.occ`` in ``hooks.py`` (diagnostics may sit beside it, as the TRL
   backend's ``oracle_probes.py``).
2. Register it: ``BACKENDS["<name>"] = "backends.<name>_backend.adapter:<Class>"`` in ``occctl/registry.py``. ``spec.backend`` accepts
   the registry's names; the module is imported only when a spec names it, so its heavy dependencies stay
   optional (an ImportError becomes an EnvError with an install hint, exit code 3).
3. What the runner relies on (a backend only prepares, trains, resumes and exports; everything every backend would
   do the same way is the runner's, ``occctl.pipeline``, so run folders look the same whatever the backend):
   - ``check`` is cheap (no GPU, no download) and returns every problem at once; backend-neutral rules belong in
     ``occctl.spec`` validation, not here.
   - ``prepare`` has no side effects: ``occctl run --dry-run`` prints its ``native_config`` and ``command``.
   - Before ``train`` the runner trains (or reuses) the spec's warm-up and passes it as ``plan.warm_start`` (None:
     start from the spec's model), then evaluates the held-out split on that start.
   - ``train`` starts from ``plan.warm_start`` or the spec's model and calls ``sink(step, metrics)`` once per
     optimizer step with ``area/name`` keys (``reward``, ``occ/lambda``, ``mtp/loss``, ...), ``sink.commit(step)``
     after every checkpoint it writes, so MLflow gets each step exactly once across a resume, and, when it holds
     the model in this process, ``sink.evaluate(step, loaded)`` (an ``occctl.models.LoadedModel``) every
     ``eval.every_steps`` steps (the runner's held-out evaluation). It returns a ``TrainResult`` whose ``checkpoint`` (a Path) is the exported final model, written
     by ``export`` at ``plan.run_dir.final_checkpoint`` (``checkpoints/final``, what ``occctl eval --run`` reads), as
     ``occctl.models.save_checkpoint`` writes it and ``occctl.models.load_checkpoint`` reads it: an HF directory with
     ``config.json`` (naming its ``model_type``), the weights as ``*.safetensors`` (``model.safetensors``, or shards
     and a ``model.safetensors.index.json`` naming only files that are there), the tokenizer files
     (``tokenizer.json`` / ``tokenizer_config.json``) and, when ``mtp.enabled``, the MTP head: in the host family's
     native layout (``occctl.mtp_layouts``; ``save_checkpoint`` puts it in ``model-mtp.safetensors``, lists it in
     the shard index when there is one and sets ``num_nextn_predict_layers: 1`` in ``config.json``, which engines
     need to serve it as a draft), or, for families without one, as ``mtp_head.safetensors`` + ``mtp_head.json``;
     not attached as ``mtp_head.*`` (a trainer checkpoint's). ``summary`` holds only the backend's own entries
     (plain JSON values; a non-finite float is written as ``null``, ``occctl.jsonio``): the ``heldout_*`` and
     ``mtp_acceptance_*`` keys are the runner's.
   - The runner checks the export before it writes ``summary.json`` (``occctl.pipeline.check_export``): first its
     files (JSON and safetensors headers only, so the check costs the same for any model size), then the one load
     the held-out eval of the export needs (``load_checkpoint``, the head included); a RunError (exit 1) naming the
     folder and what is wrong, and no ``summary.json``, when the export is not what ``occctl eval`` reads.
   - ``resume_step`` says where a rerun of an unfinished run continues (0: from the start, in place).
   - ``export`` turns one of the backend's native checkpoints into what ``occctl eval`` reads.
   - ``bench_overhead`` times the MTP regimes in one process (``occctl bench overhead``), ``bench_rollout`` plain
     vs speculative generation (``occctl bench rollout``); a backend that cannot raises EnvError.
   A test that registers a fake backend and drives it through ``occctl run``, a resume, ``occctl ls`` and ``occctl
   eval --suite tiny`` is in ``tests/unit/test_backend_contract.py``: copy it for a new backend;
   ``tests/unit/test_dummy_backend.py`` checks that a backend written from this docstring alone runs through
   ``occctl run``, ``ls``, ``eval`` and ``report``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from occctl.errors import EnvError, SpecError
from occctl.registry import BACKENDS
from occctl.rundir import RunDir
from occctl.spec import Spec

if TYPE_CHECKING:
    from rich.progress import Progress


class MetricSink(Protocol):
    """Where a backend sends per-step metrics (``occctl.runner.MetricLog``)."""

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """Record one optimizer step's metrics (written to metrics.jsonl at once)."""

    def commit(self, step: int | None = None) -> None:
        """A checkpoint including ``step`` is on disk: publish the steps up to it (None: all) to MLflow."""

    def evaluate(self, step: int, loaded: Any) -> None:
        """The runner's held-out evaluation of the model in memory (an ``occctl.models.LoadedModel``) at ``step``,
        logged as ``eval/<suite>/*`` at that step (``eval.every_steps``)."""


@dataclass(frozen=True)
class Plan:
    spec: Spec
    run_dir: RunDir
    native_config: dict[str, Any]
    command: tuple[str, ...] = ()  # the launch command, for backends that start a process (verl)
    mlflow_run_id: str | None = None  # set by the runner before ``train``: the run's MLflow run, for backends
    #                                   whose own processes log to it
    warm_start: Path | None = None  # set by the runner before ``train``: the checkpoint to start from (the
    #                                 spec's warm-up); None: the spec's model


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # the exported final checkpoint: plan.run_dir.final_checkpoint, as save_checkpoint writes it
    summary: dict[str, Any] = field(default_factory=dict)  # the backend's own summary.json entries (not heldout_*)


class Backend(Protocol):
    name: ClassVar[str]

    def check(self, spec: Spec) -> list[str]:
        """Problems of this spec for this backend, one line each; [] when it can run. Cheap: no GPU."""

    def prepare(self, spec: Spec, run_dir: RunDir) -> Plan:
        """The native config (and launch command); writes nothing."""

    def resume_step(self, plan: Plan) -> int:
        """The optimizer step a rerun of this unfinished run continues from (its last checkpoint); 0 = start."""

    def train(self, plan: Plan, sink: MetricSink, progress: "Progress | None" = None) -> TrainResult:
        """Train from ``resume_step(plan)`` (from ``plan.warm_start`` or the spec's model at step 0); checkpoints
        under the run folder, metrics to ``sink``; -> the exported final checkpoint (at
        ``plan.run_dir.final_checkpoint``, checked by the runner) and the backend's own summary entries."""

    def export(self, checkpoint: Path, out_dir: Path) -> Path:
        """One of this backend's native checkpoints -> ``out_dir`` in the form ``train``'s result has (the module
        docstring); ``occctl eval --checkpoint <a native checkpoint>`` calls it to write ``checkpoints/step-N``.
        -> out_dir"""

    def bench_overhead(self, plan: Plan, steps: int, progress: "Progress | None" = None,
                       resolve: float = 0.0) -> dict[str, Any]:
        """Median step time per MTP variant, interleaved in one process, and their ratios (``x_over_y``); at most
        ``steps`` steps each, fewer once the backend's headline ratio is resolved to ±``resolve`` (0: all). Keys
        ``occctl bench overhead`` reads: ``steps_timed``, ``completions_per_step``, ``median_step_s`` and
        ``mean_step_s`` ({variant: seconds}), each ratio ``<a>_over_<b>`` (optionally ``<a>_over_<b>_ci95: [low,
        high]``), optionally ``resolution`` and ``load_average_1min``. EnvError when the backend cannot time them."""

    def bench_rollout(self, plan: Plan, rounds: int, progress: "Progress | None" = None,
                      engines: tuple[str, ...] = ("hf",)) -> dict[str, Any]:
        """Tokens/s of plain and speculative generation, interleaved in one process, and ``spec_speedup``. Keys
        ``occctl bench rollout`` reads: ``rounds_timed``, ``completions_per_round``, ``max_new_tokens``,
        ``tokens_per_s`` ({"plain", "speculative"}), ``spec_speedup`` and ``spec_speedup_ci95``, ``accept_rate``,
        ``mean_accept_len``, ``load_average_1min`` ([before, after]). With ``"vllm"`` in ``engines`` (only asked
        for by ``--engine vllm``) also ``tokens_per_s`` "vllm" and "vllm_speculative", ``vllm_spec_speedup``,
        ``vllm_over_plain`` (each with ``_ci95``) and ``vllm_accept_rate``. EnvError when the backend cannot."""


def get_backend(name: str) -> Backend:
    target = BACKENDS.get(name)
    if target is None:
        raise EnvError(f"backend {name!r} is not available in this version of occctl",
                       hint=f"available backends: {', '.join(BACKENDS)}")
    module, cls = target.split(":")
    try:
        return vars(importlib.import_module(module))[cls]()
    except ImportError as e:
        raise EnvError(f"backend {name!r} cannot be imported: {e}",
                       hint="install what it needs (verl: backends/verl_backend/install_verl.sh)") from None


def plan_run(spec: Spec) -> Plan:
    """The backend's plan for a spec; SpecError listing the problems its ``check`` finds."""
    backend = get_backend(spec.backend)
    problems = backend.check(spec)
    if problems:
        raise SpecError("\n".join(f"{spec.name}: {p}" for p in problems))
    return backend.prepare(spec, RunDir.named(spec.name))
