"""TRL backend: small dense models on CPU or one GPU, GRPOTrainer + the shared OCC core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from occctl.backend import MetricSink, Plan, TrainResult
from occctl.spec import Spec

from backends.trl_backend.translate import grpo_config_kwargs, policy_loss_kwargs


class TrlBackend:
    name: ClassVar[str] = "trl"

    def check(self, spec: Spec) -> list[str]:
        problems = []
        if spec.backend_options:
            problems.append(f"backend_options: the trl backend takes none; got {sorted(spec.backend_options)}")
        if spec.mtp.enabled and spec.mtp.regime == "occ" and spec.train.optimizer_steps_per_generation < 2:
            problems.append("train.optimizer_steps_per_generation must be >= 2 for mtp.regime=occ: with one "
                            "optimizer step per generation the policy never moves before its loss is taken, "
                            "so delta_RL and lambda_t are identically 0")
        if spec.mtp.occ.oracle_every and (not spec.mtp.enabled or spec.mtp.regime == "detach"):
            problems.append("mtp.occ.oracle_every needs MTP gradients in the main model: use mtp.regime "
                            "ce, policy or occ")
        return problems

    def prepare(self, spec: Spec, run_dir: Path) -> Plan:
        return Plan(spec=spec, run_dir=run_dir, native_config=grpo_config_kwargs(spec, str(run_dir / "trl")))

    def train(self, plan: Plan, sink: MetricSink, progress: Any = None) -> TrainResult:
        for key, value in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("TRL_EXPERIMENTAL_SILENCE", "1"),
                           ("DISABLE_MLFLOW_INTEGRATION", "TRUE")):
            os.environ.setdefault(key, value)
        import warnings

        import torch
        from datasets import Dataset
        from transformers.utils import logging as hf_logging
        from transformers import PrinterCallback
        from trl import GRPOConfig

        from occctl.eval.heldout import evaluate_heldout
        from occctl.models import load_checkpoint, load_model, save_checkpoint
        from occctl.occ.calibration import Calibrator
        from occctl.tasks.arith import exact_match_reward, heldout_problems, train_problems
        from occctl.warmup import ensure_warm_start

        from backends.trl_backend.hooks import MetricsCallback, MtpGRPOTrainer, MtpSettings

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        spec = plan.spec
        warm = None
        if spec.model.preset == "tiny" and spec.warmup.enabled:
            warm = ensure_warm_start(spec, progress)
            loaded = load_checkpoint(warm)
        else:
            loaded = load_model(spec.model, spec.train.seed)
        if not spec.mtp.enabled:
            loaded.mtp_head = None
        model = loaded.model
        if loaded.mtp_head is not None:
            model.mtp_head = loaded.mtp_head  # a submodule: TRL's optimizer and device placement include it

        heldout = heldout_problems(spec.task)
        evaluate = lambda: evaluate_heldout(loaded, heldout, spec.eval.samples_per_problem,  # noqa: E731
                                            spec.eval.temperature, spec.train.max_new_tokens, seed=spec.train.seed)
        before = evaluate()
        problems = train_problems(spec.task, seed=spec.train.seed)
        dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})

        mtp = None
        if spec.mtp.enabled:
            occ = spec.mtp.occ
            calibrator = Calibrator(occ.lambda_plus, occ.eps, occ.estimator, occ.clip_negative, scope=occ.scope,
                                    ema=occ.ema)
            mtp = MtpSettings(regime=spec.mtp.regime, coef=spec.mtp.coef, policy_kwargs=policy_loss_kwargs(spec),
                              oracle_every=occ.oracle_every, calibrator=calibrator, baseline=occ.baseline)
        config = GRPOConfig(**{**plan.native_config, "use_cpu": not torch.cuda.is_available()})
        task_id = progress.add_task("RL", total=spec.train.steps) if progress else None
        state = {"reward": float("nan"), "lambda": float("nan")}

        def on_metrics(step: int, metrics: dict[str, float]) -> None:
            sink(step, metrics)
            state["reward"] = metrics.get("reward", state["reward"])
            state["lambda"] = metrics.get("occ/lambda", state["lambda"])
            if progress:
                progress.update(task_id, completed=step,
                                description=f"RL {spec.mtp.regime if mtp else 'no-mtp'}  reward {state['reward']:.3f}"
                                            f"  λ {state['lambda']:+.4f}")

        trainer = MtpGRPOTrainer(model=model, reward_funcs=exact_match_reward, args=config, train_dataset=dataset,
                                 processing_class=loaded.tokenizer, callbacks=[MetricsCallback(on_metrics)], mtp=mtp)
        trainer.remove_callback(PrinterCallback)
        trainer.train()

        if loaded.mtp_head is not None:
            del model.mtp_head  # saved beside the HF weights, not inside them
        after = evaluate()
        checkpoint = save_checkpoint(plan.run_dir / "checkpoints" / "final", loaded)
        return TrainResult(checkpoint=checkpoint, heldout_before=before, heldout_after=after, warm_start=warm)
