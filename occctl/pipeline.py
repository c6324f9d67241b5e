"""What every run does the same way, whatever its backend (``occctl.runner`` calls it): the warm-up, the starting
model, the held-out evaluation before, during and after training, the check that the export loads, and the
summary keys they give (``heldout_*``, ``mtp_acceptance_*``), which ``occctl report`` and ``occctl ls`` read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from occctl.errors import OccError, RunError
from occctl.spec import Spec


def warm_start(spec: Spec, progress: Any = None) -> Path | None:
    """The cached CE warm-up checkpoint of the tiny preset on a generated task (trained now if missing), or None
    when the spec has no warm-up (``warmup.enabled: false``, a model path, a dataset task)."""
    from occctl.tasks import get_task

    if spec.model.preset != "tiny" or not spec.warmup.enabled or not get_task(spec.task).generated:
        return None
    from occctl.warmup import ensure_warm_start

    return ensure_warm_start(spec, progress)


def tiny_context(spec: Spec) -> int:
    """Positions of the tiny preset: TINY_CONTEXT on the generated tasks; a dataset task's prompt + answer room."""
    from occctl.spec import TINY_CONTEXT
    from occctl.tasks import get_task

    return TINY_CONTEXT if get_task(spec.task).generated else spec.task.max_prompt_tokens + spec.train.max_new_tokens


def start_model(spec: Spec, warm: Path | None = None):
    """The model training starts from: the warm-up checkpoint, the tiny preset (on a dataset task with a tokenizer
    trained on its data), or ``model.path``. -> LoadedModel (its MTP head None when ``mtp.enabled`` is false)"""
    from occctl.models import build_tiny, load_checkpoint, load_model, set_zero_first_position
    from occctl.tasks import get_task

    if warm is not None:
        loaded = load_checkpoint(warm)
    elif spec.model.preset == "tiny" and not get_task(spec.task).generated:
        from occctl.tasks.tokenizer import task_tokenizer

        loaded = build_tiny(spec.model.tiny, spec.train.seed, task_tokenizer(spec.task), tiny_context(spec))
    else:
        loaded = load_model(spec.model, spec.train.seed)
    if not spec.mtp.enabled:
        loaded.mtp_head = None
    if loaded.mtp_head is not None:  # recorded in the config either way: a trainer's checkpoints reload it so
        zero = spec.mtp.zero_first_position
        set_zero_first_position(loaded, loaded.mtp_head.zero_first_position if zero is None else zero)
    return loaded


EXPORT_HINT = ("Backend.train must return the folder Backend.export wrote at plan.run_dir.final_checkpoint, as "
               "occctl.models.save_checkpoint writes it (the contract: occctl/backend.py)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def check_export(checkpoint: Any, spec: Spec, final: Path) -> Path:
    """The backend's export against the contract (``occctl.backend``), from its files alone: JSON and safetensors
    headers are read, no tensor, so it costs the same for any model size. RunError naming the folder and the first
    thing wrong: not ``final`` (the run's ``checkpoints/final``, or ``checkpoints/step-N``), no ``config.json`` (or one without
    ``model_type``), no ``*.safetensors`` weights (or a shard index naming a file that is absent), a damaged
    safetensors file, no tokenizer files, or, with ``mtp.enabled``, no MTP head in a format
    ``occctl.models.load_checkpoint`` reads (a head attached as ``mtp_head.*``, a trainer checkpoint's, is not an
    export). -> the folder as a Path"""
    from occctl import mtp_layouts
    from occctl.models import MTP_META, MTP_WEIGHTS, has_mtp_head
    from occctl.safetensors_files import check_weights

    if not isinstance(checkpoint, (str, os.PathLike)):
        raise RunError(f"the backend's TrainResult.checkpoint is a {type(checkpoint).__name__}, not a path",
                       hint=EXPORT_HINT)
    path = Path(checkpoint)

    def wrong(what: str) -> RunError:
        return RunError(f"the backend's export {path} {what}", hint=EXPORT_HINT)

    if not path.is_dir():
        raise wrong("is not a directory")
    if path.resolve() != Path(final).resolve():
        raise wrong(f"is not {final}, the folder `occctl eval` reads")
    if not (path / "config.json").is_file():
        raise wrong("is not an HF model directory (no config.json)")
    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError) as e:
        raise wrong(f"has an unreadable config.json ({type(e).__name__})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise wrong("has a config.json without a model_type")
    weights = {p.name for p in path.glob("*.safetensors")} - {MTP_WEIGHTS}
    if not weights - {mtp_layouts.NATIVE_FILE}:
        raise wrong("has no model weights (model*.safetensors)")
    index = path / mtp_layouts.INDEX_FILE
    if index.is_file():
        try:
            listed = set(json.loads(index.read_bytes())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise wrong(f"has an unreadable {index.name} ({type(e).__name__})") from None
        if listed - weights:
            raise wrong(f"has a {index.name} naming files it lacks: {', '.join(sorted(listed - weights))}")
    try:
        check_weights(path, "the backend's export")
    except OccError as e:
        raise RunError(e.message, hint=EXPORT_HINT) from None
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise wrong(f"has no tokenizer files ({' or '.join(TOKENIZER_FILES[:2])}: save the tokenizer beside the "
                    "weights)")
    if not spec.mtp.enabled:
        return path
    if (path / MTP_WEIGHTS).is_file() != (path / MTP_META).is_file():
        raise wrong(f"has one of {MTP_WEIGHTS} and {MTP_META} without the other")
    if not has_mtp_head(path):
        raise wrong("has no MTP head (mtp.enabled is true): expected the host family's native MTP layer "
                    f"({mtp_layouts.NATIVE_FILE}, occctl.mtp_layouts) or, for families without one, "
                    f"{MTP_WEIGHTS} + {MTP_META}")
    if not (path / MTP_WEIGHTS).is_file():
        keys = mtp_layouts.checkpoint_keys(path)
        if any(k.startswith("mtp_head.") for k in keys):
            raise wrong("holds the MTP head attached as mtp_head.* (a trainer checkpoint), not in the native "
                        "layout: export it with occctl.models.save_checkpoint")
    return path


def load_export(checkpoint: Path, spec: Spec, final: Path | None = None):
    """The backend's export, checked (``check_export``: ``final`` is where it must be; None: where it is), then
    loaded as ``occctl eval`` loads it, once (the held-out eval uses this model); RunError, naming the folder, when
    it does not load or lacks the MTP head (the runner then writes no summary)."""
    from occctl.models import load_checkpoint

    path = check_export(checkpoint, spec, checkpoint if final is None else final)
    try:
        loaded = load_checkpoint(path, spec.model.dtype, spec.model.trust_remote_code, new_head_if_missing=False)
    except OccError as e:
        raise RunError(f"the backend's export {path} does not load: {e.message}", hint=EXPORT_HINT) from None
    if not spec.mtp.enabled:
        loaded.mtp_head = None
    elif loaded.mtp_head is None:
        raise RunError(f"the backend's export {path} loads without its MTP head (mtp.enabled is true)",
                       hint=EXPORT_HINT)
    return loaded


def on_accelerator(loaded) -> None:
    """A model the runner loaded (the start, the export) goes to the GPU when there is one, as training's does
    (a model already there, e.g. the trainer's during the periodic eval, stays). Untested on a GPU so far."""
    import torch

    if torch.cuda.is_available() and loaded.model.device.type == "cpu":
        loaded.model.to("cuda")
        if loaded.mtp_head is not None:
            loaded.mtp_head.to("cuda")


class HeldoutEval:
    """The held-out evaluation of a spec: avg@k, pass@k and greedy accuracy under the task's grader (through its
    reward, so a math grader runs in the grading pool), and the MTP head's draft acceptance."""

    def __init__(self, spec: Spec) -> None:
        from occctl.tasks import get_task
        from occctl.tasks.rewards import TaskReward

        self.spec, self.task = spec, get_task(spec.task)
        self.problems = self.task.heldout_problems(spec.task)
        self.reward = TaskReward(spec.task, spec.train.max_new_tokens)
        self.label = spec.eval.suite if self.task.generated else "heldout"

    def __call__(self, loaded) -> dict[str, float]:
        """The numbers over every held-out problem; a dataset task adds ``<benchmark>/avg_at_k`` (and pass@k,
        greedy) per benchmark of ``task.heldout``."""
        s = self.spec
        on_accelerator(loaded)
        if self.task.generated:
            return self._evaluate(loaded, self.problems)
        from occctl.tasks.dataset import heldout_benchmarks

        parts = {name: (len(problems), self._evaluate(loaded, problems))
                 for name, problems in heldout_benchmarks(s.task).items()}
        total = sum(n for n, _ in parts.values())
        result = {key: sum(n * r[key] for n, r in parts.values() if key in r) / total
                  for key in ("avg_at_k", "pass_at_k", "greedy", "mtp_acceptance")
                  if all(key in r for _, r in parts.values())}
        result["grader_timeouts"] = sum(r.get("grader_timeouts", 0.0) for _, r in parts.values())
        for name, (_, r) in parts.items():
            result.update({f"{name}/{key}": r[key] for key in ("avg_at_k", "pass_at_k", "greedy")})
        return result

    def _evaluate(self, loaded, problems) -> dict[str, float]:
        from occctl.heldout import evaluate_heldout

        s = self.spec
        prompts = [self.task.prompt_text(s.task, loaded.tokenizer, p) for p in problems]
        return evaluate_heldout(loaded, problems, s.eval.samples_per_problem, s.eval.temperature,
                                s.train.max_new_tokens, seed=s.train.seed, reward=self.reward, prompts=prompts,
                                problems_per_batch=None if self.task.generated else 16)

    def metrics(self, result: dict[str, float]) -> dict[str, float]:
        """Metric keys of a result during training, e.g. ``eval/tiny/avg_at_k`` (plotted by reports)."""
        from occctl.eval.suites import training_eval_key

        return {training_eval_key(self.label, key): value for key, value in result.items()}

    def close(self) -> None:
        self.reward.close()


def heldout_summary(spec: Spec, before: dict[str, float], after: dict[str, float]) -> dict[str, float | int]:
    """The summary entries of the held-out eval before and after RL (``summary.json``)."""
    nan = float("nan")
    return {
        "heldout_acc_before": before.get("avg_at_k", nan),
        "heldout_acc_after": after.get("avg_at_k", nan),
        "heldout_greedy_before": before.get("greedy", nan),
        "heldout_greedy_after": after.get("greedy", nan),
        "mtp_acceptance_before": before.get("mtp_acceptance", nan),
        "mtp_acceptance_after": after.get("mtp_acceptance", nan),
        "heldout_k": spec.eval.samples_per_problem,
    }
