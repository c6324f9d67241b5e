"""TRL backend: small dense models on CPU or one GPU, GRPOTrainer + the shared OCC core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from occctl.backend import MetricSink, Plan, TrainResult
from occctl.rundir import RunDir
from occctl.spec import Spec

if TYPE_CHECKING:
    from rich.progress import Progress

from backends.trl_backend.translate import grpo_config_kwargs, policy_loss_kwargs


TINY_THREADS = 1  # torch threads for the tiny preset when OMP_NUM_THREADS is not set (see default_threads)


class TrlBackend:
    name: ClassVar[str] = "trl"

    def check(self, spec: Spec) -> list[str]:
        problems = []
        if spec.backend_options:
            problems.append(f"backend_options: the trl backend takes none; got {sorted(spec.backend_options)}")
        if spec.train.save_every % spec.train.optimizer_steps_per_generation:
            problems.append(f"train.save_every ({spec.train.save_every}) must be a multiple of "
                            f"train.optimizer_steps_per_generation ({spec.train.optimizer_steps_per_generation}): "
                            "a resumed run restarts at a generation boundary")
        if spec.mtp.occ.oracle_every and (not spec.mtp.enabled or spec.mtp.regime == "detach"):
            problems.append("mtp.occ.oracle_every needs MTP gradients in the main model: use mtp.regime "
                            "ce, policy or occ")
        return problems

    def prepare(self, spec: Spec, run_dir: RunDir) -> Plan:
        return Plan(spec=spec, run_dir=run_dir, native_config=grpo_config_kwargs(spec, str(run_dir / "trl")))

    def resume_step(self, plan: Plan) -> int:
        """The optimizer step of the newest complete TRL checkpoint; 0 = from the start."""
        checkpoint = last_checkpoint(plan.run_dir)
        return checkpoint_step(checkpoint) if checkpoint else 0

    def train(self, plan: Plan, sink: MetricSink, progress: Progress | None = None) -> TrainResult:
        from occctl.eval.heldout import evaluate_heldout
        from occctl.models import save_checkpoint
        from occctl.tasks import get_task

        import torch

        from backends.trl_backend.hooks import CALIBRATOR_STATE, CheckpointSaved, MetricsCallback, PeriodicEval

        spec = plan.spec
        default_threads(spec)
        loaded, warm = load_start(spec, progress)
        task = get_task(spec.task)
        heldout = task.heldout_problems(spec.task)
        evaluate = lambda: evaluate_heldout(loaded, heldout, spec.eval.samples_per_problem,  # noqa: E731
                                            spec.eval.temperature, spec.train.max_new_tokens, seed=spec.train.seed,
                                            correct=task.is_correct)
        before = evaluate()
        task_id = progress.add_task("RL", total=spec.train.steps, unit="step") if progress else None
        state = {"reward": float("nan"), "lambda": float("nan")}
        label = spec.mtp.regime if spec.mtp.enabled else "no-mtp"

        def on_metrics(step: int, metrics: dict[str, float]) -> None:
            sink(step, metrics)
            state["reward"] = metrics.get("reward", state["reward"])
            state["lambda"] = metrics.get("occ/lambda", state["lambda"])
            if progress:
                progress.update(task_id, completed=step,
                                description=f"RL {label}  reward {state['reward']:.3f}  λ {state['lambda']:+.4f}")

        callbacks = [MetricsCallback(on_metrics)]
        if spec.eval.every:
            callbacks.append(PeriodicEval(spec.eval.every, spec.train.steps,
                                          lambda step: sink(step, _eval_metrics(spec, evaluate()))))
        settings = mtp_settings(spec)
        resume = last_checkpoint(plan.run_dir)
        if resume is not None and checkpoint_step(resume) >= spec.train.steps:
            # killed after its last checkpoint: the checkpoint is the trained model (HF's loop would take one more
            # optimizer step before it checks max_steps)
            from occctl.models import load_checkpoint

            loaded = load_checkpoint(resume, new_head_if_missing=False)
        else:
            if settings is not None and resume is not None:
                if not (resume / CALIBRATOR_STATE).is_file():
                    raise RunError(f"checkpoint {resume} has no {CALIBRATOR_STATE}: cannot resume the OCC calibrator",
                                   hint="rerun with --fresh to start the run over")
                settings.calibrator.load_state_dict(torch.load(resume / CALIBRATOR_STATE))
            callbacks.append(CheckpointSaved(sink.commit, settings.calibrator if settings is not None else None))
            trainer = build_trainer(spec, plan.native_config, loaded, settings, callbacks)
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        detach_head(loaded)
        after = evaluate()
        sink(spec.train.steps, _eval_metrics(spec, after))
        checkpoint = save_checkpoint(plan.run_dir.final_checkpoint, loaded)
        return TrainResult(checkpoint=checkpoint, summary=heldout_summary(spec, before, after), warm_start=warm)

    def export(self, checkpoint: Path, out_dir: Path) -> Path:
        """A TRL checkpoint (``trl/checkpoint-N``: the model with the MTP head as its ``mtp_head`` submodule) ->
        HF weights + the head in the host family's layout in ``out_dir``, as ``checkpoints/final/``."""
        from occctl.models import load_checkpoint, save_checkpoint

        quiet_libraries()
        return save_checkpoint(out_dir, load_checkpoint(checkpoint, new_head_if_missing=False))

    def bench_overhead(self, plan: Plan, steps: int, progress: Progress | None = None,
                       resolve: float = 0.0) -> dict[str, Any]:
        from backends.trl_backend.bench import measure_overhead

        default_threads(plan.spec)
        return measure_overhead(plan.spec, plan.native_config, steps, progress, resolve)


    def bench_rollout(self, plan: Plan, rounds: int, progress: Progress | None = None) -> dict[str, Any]:
        from backends.trl_backend.bench import measure_rollout

        default_threads(plan.spec)
        return measure_rollout(plan.spec, rounds, progress)


def default_threads(spec: Spec) -> None:
    """The tiny preset's matrices are too small to gain from many threads, and torch's default (one per core)
    oversubscribes the machine beside other jobs (a tiny run was 4-5x slower): use ``TINY_THREADS`` unless
    OMP_NUM_THREADS says otherwise. Larger models keep torch's default."""
    import torch

    if spec.model.preset == "tiny" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(TINY_THREADS, os.cpu_count() or 1)))


def heldout_summary(spec: Spec, before: dict[str, float], after: dict[str, float]) -> dict[str, float | int]:
    """The summary entries of the held-out eval before and after RL (``summary.json``)."""
    return {
        "heldout_acc_before": before.get("avg_at_k", float("nan")),
        "heldout_acc_after": after.get("avg_at_k", float("nan")),
        "heldout_greedy_before": before.get("greedy", float("nan")),
        "heldout_greedy_after": after.get("greedy", float("nan")),
        "mtp_acceptance_before": before.get("mtp_acceptance", float("nan")),
        "mtp_acceptance_after": after.get("mtp_acceptance", float("nan")),
        "heldout_k": spec.eval.samples_per_problem,
    }


def last_checkpoint(run_dir: RunDir | Path) -> Path | None:
    """The newest complete TRL checkpoint of a run (``trl/checkpoint-N`` with occctl's completion marker, written
    after everything else of it: ``hooks.CheckpointSaved``), if any."""
    from backends.trl_backend.hooks import CHECKPOINT_DONE

    found = [p for p in (run_dir / "trl").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / CHECKPOINT_DONE).is_file()]
    return max(found, key=checkpoint_step, default=None)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a TRL checkpoint folder (``checkpoint-N``)."""
    return int(checkpoint.name.split("-")[-1])


def _eval_metrics(spec: Spec, result: dict[str, float]) -> dict[str, float]:
    from occctl.eval.suites import training_eval_key

    return {training_eval_key(spec.eval.suite, key): value for key, value in result.items()}


def quiet_libraries() -> None:
    """No HF progress bars, telemetry or FutureWarnings; MLflow is ours, not the HF integration's."""
    for key, value in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("TRL_EXPERIMENTAL_SILENCE", "1"),
                       ("DISABLE_MLFLOW_INTEGRATION", "TRUE")):
        os.environ.setdefault(key, value)
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def load_start(spec: Spec, progress: Any = None):
    """The starting model: the cached CE warm-up of the tiny preset, or the spec's model. -> (LoadedModel, warm dir)"""
    from occctl.models import load_checkpoint, load_model
    from occctl.warmup import ensure_warm_start

    quiet_libraries()
    warm = None
    if spec.model.preset == "tiny" and spec.warmup.enabled:
        warm = ensure_warm_start(spec, progress)
        loaded = load_checkpoint(warm)
    else:
        loaded = load_model(spec.model, spec.train.seed)
    if not spec.mtp.enabled:
        loaded.mtp_head = None
    return loaded, warm


def mtp_settings(spec: Spec, oracle_every: int | None = None):
    """The trainer's MTP settings for the spec (None: plain GRPO without an MTP head)."""
    from occctl.mtp_config import calibrator_kwargs, uses_oracle_lambda
    from occctl.occ.calibration import Calibrator

    from backends.trl_backend.hooks import MtpSettings

    if not spec.mtp.enabled:
        return None
    occ = spec.mtp.occ
    return MtpSettings(regime=spec.mtp.regime, coef=spec.mtp.coef, policy_kwargs=policy_loss_kwargs(spec),
                       oracle_every=occ.oracle_every if oracle_every is None else oracle_every,
                       calibrator=Calibrator(**calibrator_kwargs(spec)), baseline=occ.baseline,
                       oracle_lambda=uses_oracle_lambda(spec), draft_loss=spec.mtp.draft_loss,
                       draft_coef=spec.mtp.draft_coef)


def build_trainer(spec: Spec, native_config: dict[str, Any], loaded, mtp, callbacks: list[Any]):
    """An MtpGRPOTrainer on the task's training prompts; the MTP head becomes a submodule of the model so
    TRL's optimizer and device placement include it (``detach_head`` undoes that before saving)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig

    from occctl.tasks import get_task

    from backends.trl_backend.hooks import MtpGRPOTrainer

    model = loaded.model
    if loaded.mtp_head is not None and mtp is not None:
        model.mtp_head = loaded.mtp_head
    task = get_task(spec.task)
    problems = task.train_problems(spec.task, seed=spec.train.seed)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})
    config = GRPOConfig(**{**native_config, "use_cpu": not torch.cuda.is_available()})
    trainer = MtpGRPOTrainer(model=model, reward_funcs=task.reward, args=config, train_dataset=dataset,
                             processing_class=loaded.tokenizer, callbacks=callbacks, mtp=mtp,
                             speculative=spec.train.speculative)
    trainer.remove_callback(PrinterCallback)
    return trainer


def detach_head(loaded) -> None:
    """The MTP head is saved beside the HF weights, not inside them."""
    if "mtp_head" in dict(loaded.model.named_children()):
        del loaded.model.mtp_head
