"""veRL backend: large models on a GPU cluster, veRL 0.9.1 with Megatron training and SGLang rollouts, the
shared OCC core inside the workers (``plugin.py`` -> ``hooks.py``).

``prepare`` builds the ``python -m verl.trainer.main_ppo`` launch and validates it on CPU against the installed
veRL (Hydra compose, dataclasses, ``validate_config``); without veRL installed the command is still built and
the plan says that validation was skipped. ``train`` converts the prompts, starts veRL, follows its log and
collects the final HF checkpoint into ``checkpoints/final``. See backends/verl_backend/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from occctl.backend import MetricSink, Plan, TrainResult
from occctl.errors import EnvError, RunError, SpecError
from occctl.jsonio import dumps
from occctl.processes import stop_group
from occctl.rundir import RunDir
from occctl.spec import Spec

from backends.verl_backend.options import VerlOptions, override_key, parse_options
from backends.verl_backend.shapes import TRANSFORMER, load_shape, shape_problems
from backends.verl_backend.translate import (
    ALGORITHMS, launch_env, managed_keys, plugin_term, verl_overrides, verl_steps)

INSTALL_HINT = "install veRL 0.9.1 with backends/verl_backend/install_verl.sh (in its own venv); " \
               "the GPU run also needs Megatron, " \
               "Megatron-Bridge/mbridge and SGLang, see backends/verl_backend/README.md"


class VerlBackend:
    name: ClassVar[str] = "verl"

    def check(self, spec: Spec) -> list[str]:
        try:
            options = verl_options(spec)
        except SpecError as e:
            return e.message.splitlines()
        return (spec_problems(spec, options) + override_problems(spec, options) + layout_problems(spec, options)
                + data_problems(options))

    def prepare(self, spec: Spec, run_dir: RunDir) -> Plan:
        from occctl.tracking import tracking_uri

        from backends.verl_backend.validation import validate_overrides

        options = verl_options(spec)
        uri = tracking_uri(spec.tracking.uri) if spec.tracking.mlflow else None
        overrides = verl_overrides(spec, options, run_dir, uri)
        env = launch_env(spec, uri)
        command = ("env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "verl.trainer.main_ppo",
                   *overrides)
        checked = validate_overrides(overrides, spec.name, raw=options.overrides)
        shape, _, no_shape = load_shape(spec, options)
        from occctl.console import err

        if checked.skipped:
            err.print(f"warning: veRL validation skipped: {checked.skipped}; the command below is unchecked",
                      highlight=False, markup=False)
        if no_shape:
            err.print(f"warning: model shape checks skipped: {no_shape}; the parallel layout is unchecked",
                      highlight=False, markup=False)
        native = {
            "backend": "verl",
            "verl_version": checked.verl_version,
            "validation": "passed" if checked.skipped is None else f"skipped: {checked.skipped}",
            "shape_check": f"passed against {shape.source}" if shape else f"skipped: {no_shape}",
            "verl_steps": verl_steps(spec),
            "launch": {"env": env, "overrides": overrides, "cwd": str(run_dir / "verl")},
            "data": {"train": options.data.train, "val": options.data.val, "template": options.data.prompt_template},
            "config": checked.config,
        }
        return Plan(spec=spec, run_dir=run_dir, native_config=native, command=command)

    def resume_step(self, plan: Plan) -> int:
        """veRL runs are not resumed (``trainer.resume_mode=disable``): a rerun starts over in place."""
        return 0

    def train(self, plan: Plan, sink: MetricSink, progress: Any = None) -> TrainResult:
        from backends.verl_backend.logs import StepFollower

        spec, run_dir = plan.spec, plan.run_dir
        if not plan.native_config.get("verl_version"):
            raise EnvError("the verl backend cannot train: veRL is not installed in this environment",
                           hint=INSTALL_HINT)
        options = verl_options(spec)
        write_prompts(options, run_dir)
        command = launch_command(plan)
        (run_dir / "verl").mkdir(parents=True, exist_ok=True)
        (run_dir / "verl_command.json").write_text(dumps(command, indent=1) + "\n")
        records = (run_dir / "verl_metrics.jsonl").open("a", encoding="utf-8")

        def record(step: int, metrics: dict[str, float]) -> None:
            records.write(dumps({"step": step, **metrics}) + "\n")
            records.flush()

        label = spec.mtp.regime if spec.mtp.enabled else "no-mtp"
        follower = StepFollower(sink, record, spec.train.optimizer_steps_per_generation, verl_steps(spec), label,
                                progress)
        try:
            run_logged(command, run_dir / "verl", run_dir / "verl.log", follower.feed)
        finally:
            records.close()
        if follower.last_step < verl_steps(spec):
            raise RunError(f"veRL exited normally after step {follower.last_step} of {verl_steps(spec)}",
                           hint=f"see {run_dir / 'verl.log'}")
        return TrainResult(checkpoint=self.export(run_dir / "verl" / "checkpoints", run_dir.final_checkpoint))

    def export(self, checkpoint: Path, out_dir: Path) -> Path:
        """veRL's checkpoint folder (``default_local_dir``) -> its newest checkpoint as HF weights + the MTP head
        (hard links where possible); a note says why the head could not be extracted."""
        from backends.verl_backend.checkpoints import collect

        _, final, note = collect(checkpoint, out_dir)
        if note:
            (final / "MTP_HEAD_NOT_EXTRACTED.txt").write_text(note + "\n")
        return final

    def bench_overhead(self, plan: Plan, steps: int, progress: Any = None, resolve: float = 0.0) -> dict[str, Any]:
        raise EnvError("occctl bench overhead runs on the trl backend only; the veRL backend has no "
                       "in-process timing of its MTP regimes", hint="use a copy of the spec with backend: trl")

    def bench_rollout(self, plan: Plan, rounds: int, progress: Any = None,
                      engines: tuple[str, ...] = ("hf",)) -> dict[str, Any]:
        raise EnvError("occctl bench rollout runs on the trl backend only; the veRL backend's rollouts are SGLang's "
                       "(its own speculative decoding)", hint="use a copy of the spec with backend: trl")


def verl_options(spec: Spec) -> VerlOptions:
    """The spec's backend_options, with a dataset task's keys (``task.train``, the first of ``task.heldout`` as
    veRL's validation set, ``task.prompt``, ``task.max_prompt_tokens``, ``task.overlong``) as veRL's data and
    overlong options, so one spec trains the same task on either backend (the runner evaluates every held-out
    benchmark before and after)."""
    raw = dict(spec.backend_options)
    task = spec.task
    if task.name != "dataset":
        return parse_options(raw)
    for key, what in (("data", "task.train / task.heldout / task.prompt"), ("overlong_buffer", "task.overlong")):
        if key in raw and (key == "data" or task.overlong.buffer_tokens):
            raise SpecError(f"backend_options.{key} and {what} both set it for task.name: dataset; drop "
                            f"backend_options.{key}")
    val = task.heldout[0] if task.heldout[0].endswith(".jsonl") or task.heldout[0].startswith("/") \
        else f"{task.heldout[0]}.jsonl"  # <suite>/<benchmark>: the suite's file
    raw["data"] = {"train": task.train, "val": val, "prompt_template": task.prompt,
                   "max_prompt_tokens": task.max_prompt_tokens}
    if task.overlong.buffer_tokens:
        raw["overlong_buffer"] = {"enabled": True, "tokens": task.overlong.buffer_tokens,
                                  "penalty_factor": task.overlong.penalty_factor}
    return parse_options(raw)


# --- checks ---------------------------------------------------------------------------------------------------


def spec_problems(spec: Spec, o: VerlOptions) -> list[str]:
    t, p, problems = spec.train, o.parallel, []
    k = t.optimizer_steps_per_generation
    if spec.model.path is None:
        problems.append("model: the verl backend needs model.path (an HF directory or hub id of a model with an MTP "
                        "layer, e.g. XiaomiMiMo/MiMo-7B-RL); the tiny preset is TRL-only")
    for name, value in (("train.steps", t.steps), ("train.prompts_per_generation", t.prompts_per_generation),
                        ("train.save_every_steps", t.save_every_steps)):
        if value % k:
            problems.append(f"{name} = {value} must be a multiple of train.optimizer_steps_per_generation = {k} "
                            f"(a veRL step is one generation round of {k} optimizer steps)")
    if spec.mtp.occ.baseline != "main_old":
        problems.append("mtp.occ.baseline: the verl backend supports main_old only (the MTP head's old log-probs "
                        "are not computed in veRL's old-log-prob pass)")
    if spec.mtp.occ.oracle_every_steps:
        problems.append("mtp.occ.oracle_every_steps: oracle gradient geometry is TRL-only; set it to 0")
    if spec.mtp.enabled and spec.mtp.occ.estimator in ("oracle", "hidden_grad"):
        source = "exact gradients" if spec.mtp.occ.estimator == "oracle" else "gradients at the trunk's output"
        problems.append(f"mtp.occ.estimator: {spec.mtp.occ.estimator} (lambda_t from each micro-batch's {source}) "
                        "is TRL-only; use ratio_of_sums or mean_of_ratios")
    if spec.mtp.policy_clip.dual_clip is None and ALGORITHMS[spec.algorithm.name][0] == "vanilla":
        problems.append(f"mtp.policy_clip.dual_clip: null cannot hold on veRL: the {spec.algorithm.name} loss of the "
                        f"main head always applies its dual clip (clip_ratio_c, which occctl sets from this key "
                        f"so both heads share it); give a value > 1")
    if spec.eval.every_steps:
        problems.append("eval.every_steps: in-training held-out eval is TRL-only; use backend_options.validation (veRL's "
                        "validation set) and `occctl eval --run NAME` after training")
    if spec.train.speculative:
        problems.append("train.speculative: occctl's MTP-drafted rollouts are TRL-only; on veRL use "
                        "backend_options.rollout.speculative (SGLang's NEXTN drafting)")
    if spec.train.rollout_engine != "hf":
        problems.append(f"train.rollout_engine: {spec.train.rollout_engine} is the trl backend's rollout engine; "
                        "veRL's is backend_options.rollout.engine (vllm or sglang)")
    if spec.mtp.draft_loss != "none":
        problems.append(f"mtp.draft_loss: {spec.mtp.draft_loss} is TRL-only for now; set it to none")
    if spec.mtp.zero_first_position is not None:
        problems.append("mtp.zero_first_position: TRL-only for now (veRL trains Megatron's MTP layer, not occctl's "
                        "head); leave it unset")
    if o.rollout.speculative and not spec.mtp.enabled:
        problems.append("backend_options.rollout.speculative needs the MTP layer (mtp.enabled: true)")
    world = o.world_size
    for what, size in (("parallel.tp x parallel.pp x parallel.cp", p.tp * p.pp * p.cp),
                       ("parallel.ep x parallel.etp x parallel.pp", p.ep * (p.etp or 1) * p.pp),
                       ("rollout.tp", o.rollout.tp)):
        if world % size:
            problems.append(f"backend_options: {what} = {size} must divide the {world} GPUs "
                            f"(nnodes {o.nnodes} x gpus_per_node {o.gpus_per_node})")
    dp = o.data_parallel
    if dp and spec.completions_per_step % dp:
        problems.append(f"the {spec.completions_per_step} completions of an optimizer step must split evenly over "
                        f"the {dp} data-parallel ranks")
    elif dp and not o.micro_batch.dynamic and (spec.completions_per_step // dp) % t.micro_batches_per_step:
        problems.append(f"each data-parallel rank gets {spec.completions_per_step // dp} completions per optimizer "
                        f"step, which train.micro_batches_per_step = {t.micro_batches_per_step} does not divide")
    if o.micro_batch.dynamic and t.micro_batches_per_step != 1:
        problems.append("train.micro_batches_per_step has no meaning with backend_options.micro_batch.dynamic: true "
                        "(micro-batches follow a token budget); leave it at 1")
    if o.overlong_buffer.enabled and o.overlong_buffer.tokens >= t.max_new_tokens:
        problems.append(f"backend_options.overlong_buffer.tokens = {o.overlong_buffer.tokens} must be smaller than "
                        f"train.max_new_tokens = {t.max_new_tokens}")
    return problems


def layout_problems(spec: Spec, o: VerlOptions) -> list[str]:
    """The model's shape against the parallel layout (``shapes.py``), and pipeline layouts the plugin cannot use."""
    shape, problems, _ = load_shape(spec, o)
    ours = plugin_term(spec, o)
    if shape is not None:
        problems += shape_problems(spec, o, shape, plugin_regime=ours)
    layout = f"{TRANSFORMER}.pipeline_model_parallel_layout"
    if ours and any(override_key(item) == layout for item in o.overrides):
        problems.append(f"backend_options.overrides: {layout} is not supported with mtp.regime = {spec.mtp.regime}: "
                        f"the occctl MTP term needs the MTP layer in the last pipeline stage's postprocess, where "
                        f"parallel.pp / parallel.vpp put it")
    return problems


def override_problems(spec: Spec, o: VerlOptions) -> list[str]:
    problems = []
    managed = managed_keys(spec, o)
    for item in o.overrides:
        key = override_key(item)
        if key is None:
            problems.append(f"backend_options.overrides: {item!r} is not a veRL override (expected key=value, "
                            f"+key=value or ~key)")
        elif key in managed or key.startswith(("ray_kwargs.ray_init.runtime_env.env_vars.",
                                               "actor_rollout_ref.actor.profile.occctl_")):
            problems.append(f"backend_options.overrides: {key} is set by occctl from the spec; change the spec "
                            f"(or its backend_options) instead of overriding it")
    return problems


def data_problems(o: VerlOptions) -> list[str]:
    problems = []
    for field, ref in (("train", o.data.train), ("val", o.data.val)):
        try:
            data_file(ref)
        except (SpecError, EnvError) as e:
            problems.append(f"backend_options.data.{field}: {e.message}")
    return problems


def data_file(ref: str) -> Path:
    """A prompt file: an absolute path, or ``<dataset>/<file>`` under occctl's data root (a relative parquet is
    refused: relative paths name occctl JSONL data)."""
    from occctl.tasks.dataset import resolve_file

    if ref.endswith(".parquet") and not Path(ref).expanduser().is_absolute():
        raise SpecError(f"{ref}: give a veRL parquet as an absolute path (relative paths name occctl JSONL data)")
    return resolve_file(ref)


# --- launch ---------------------------------------------------------------------------------------------------


def write_prompts(options: VerlOptions, run_dir: Path) -> None:
    from backends.verl_backend.prompts import write_parquet

    for split, ref in (("train", options.data.train), ("val", options.data.val)):
        if not ref.endswith(".parquet"):
            write_parquet(data_file(ref), run_dir / "data" / f"{split}.parquet", options.data.prompt_template, split)


def launch_command(plan: Plan) -> list[str]:
    """The plan's command; with a known MLflow run, veRL's logger attaches to it (driver env and Ray workers)."""
    command, mlflow_run_id = list(plan.command), plan.mlflow_run_id
    if mlflow_run_id and plan.spec.tracking.mlflow:
        command.insert(1, f"MLFLOW_RUN_ID={mlflow_run_id}")
        command.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.MLFLOW_RUN_ID={mlflow_run_id}")
    return command


def run_logged(command: list[str], cwd: Path, log_path: Path, on_line, tail: int = 20) -> None:
    """Run ``command``, tee its output to ``log_path`` and ``on_line``; RunError with the last lines on failure.
    Ctrl-C stops the whole process group (Ray's local cluster included)."""
    cwd.mkdir(parents=True, exist_ok=True)
    last: deque[str] = deque(maxlen=tail)
    with log_path.open("a", encoding="utf-8") as log:
        try:
            proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, errors="replace", start_new_session=True)
        except OSError as e:
            raise EnvError(f"cannot start veRL: {e}", hint=INSTALL_HINT) from None
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                last.append(line.rstrip("\n"))
                on_line(line)
            rc = proc.wait()
        except BaseException:
            stop_group(proc, grace_s=30.0)
            raise
    if rc != 0:
        lines = "\n".join(last)
        raise RunError(f"veRL exited with code {rc}; log: {log_path}; last {len(last)} lines:\n{lines}")
