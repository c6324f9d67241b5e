"""Supervised warm-up of the tiny preset (main head + MTP head by CE), cached by config hash.

RL from a random model on the arithmetic task plateaus at "emit a digit"; a short CE warm-up on the
answer tokens gives RL a model with headroom. The result is an ordinary occctl checkpoint under
``<cache>/warmup/<hash>/``; every run with the same model/task/warm-up config reuses it. Concurrent runs
(a study's cells on ``--jobs N``) train it once: the first takes ``<hash>.lock``, the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from occctl.environment import machine_record
from occctl.errors import RunError
from occctl.heldout import evaluate_heldout
from occctl.models import build_tiny, save_checkpoint, set_zero_first_position
from occctl.occ.mtp_head import mtp_logits
from occctl.rundir import WARMUP_RECORD, cache_root, write_json_atomic
from occctl.spec import Spec
from occctl.tasks import get_task

WARMUP_FORMAT = 2  # bump when the warm-up procedure or a task's text format changes, so stale caches are not reused
DONE = WARMUP_RECORD


def warmup_key(spec: Spec) -> str:
    warmup = spec.warmup.model_dump()
    if warmup["target"] is None:  # a fixed step count: the key it had before targets existed
        del warmup["target"], warmup["check_every_steps"]
    else:  # the check's sampling decides where it stops
        warmup["check"] = {"k": spec.eval.samples_per_problem, "temperature": spec.eval.temperature,
                           "max_new_tokens": spec.train.max_new_tokens}
    payload = {"format": WARMUP_FORMAT, "model": spec.model.tiny.model_dump(), "task": spec.task.model_dump(),
               "warmup": warmup}
    if spec.mtp.zero_first_position is not None:  # the head's warm-up may differ; absent: earlier keys stay valid
        payload["mtp_zero_first_position"] = spec.mtp.zero_first_position
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def warm_start_dir(spec: Spec) -> Path:
    return cache_root() / "warmup" / warmup_key(spec)


def ensure_warm_start(spec: Spec, progress=None) -> Path:
    """The cached warm-up checkpoint for ``spec`` (trained now if missing). ``progress``: a rich Progress."""
    final = warm_start_dir(spec)
    if (final / DONE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with final.with_name(f"{final.name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another run is training this warm-up: wait for it rather than train it twice
            if progress:
                progress.console.print(f"warm-up {final.name}: another run is training it, waiting for it",
                                       markup=False, highlight=False)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / DONE).is_file():  # the lock is released when the file closes
            _train_warm_start(spec, final, progress)
    return final


def _train_warm_start(spec: Spec, final: Path, progress) -> None:
    start = time.perf_counter()
    loaded = build_tiny(spec.model.tiny, spec.warmup.seed)
    if spec.mtp.zero_first_position is not None:
        set_zero_first_position(loaded, spec.mtp.zero_first_position)
    model, head, tok, w = loaded.model, loaded.mtp_head, loaded.tokenizer, spec.warmup
    task = get_task(spec.task)
    problems = task.train_problems(spec.task, seed=w.seed)
    ids = tok([p.prompt + p.answer for p in problems])["input_ids"]
    if len({len(x) for x in ids}) != 1:
        raise ValueError("warm-up expects equal-length sequences (zero-padded operands)")
    data = torch.tensor([x + [tok.eos_token_id] for x in ids])  # [N, T]
    prompt_len, seq_len = len(tok(problems[0].prompt)["input_ids"]), data.size(1)
    targets = slice(prompt_len, seq_len)  # answer digits + eos
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=w.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, w.lr_warmup_steps)))
    gen = torch.Generator().manual_seed(w.seed)
    ones = torch.ones(w.examples_per_step, seq_len, dtype=torch.long)
    task_id = progress.add_task("warm-up (cached afterwards)", total=w.steps) if progress else None
    checks: list[dict] = []

    def heldout_now() -> dict[str, float]:
        return evaluate_heldout(loaded, task.heldout_problems(spec.task), spec.eval.samples_per_problem,
                                spec.eval.temperature, spec.train.max_new_tokens, seed=0, correct=task.is_correct)

    model.train()
    steps_done = 0
    for step in range(w.steps):
        x = data[torch.randint(len(data), (w.examples_per_step,), generator=gen)]
        h = model.base_model(input_ids=x).last_hidden_state  # [B, T, H]
        logits = model.get_output_embeddings()(h[:, prompt_len - 1: seq_len - 1])
        loss_main = F.cross_entropy(logits.flatten(0, 1), x[:, targets].flatten())
        logits_mtp = mtp_logits(model, head, h, x, ones, slice(prompt_len - 2, seq_len - 2))
        loss_mtp = F.cross_entropy(logits_mtp.flatten(0, 1), x[:, targets].flatten())
        loss = loss_main + w.mtp_coef * loss_mtp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        steps_done = step + 1
        if progress:
            progress.update(task_id, advance=1, description=f"warm-up  loss {loss.item():.3f}")
        if w.target is not None and steps_done % w.check_every_steps == 0:
            checks.append({"step": steps_done, "avg_at_k": heldout_now()["avg_at_k"]})
            if _in_band(checks, w.target, progress):
                break
    heldout = heldout_now()
    if w.target is not None and not w.target[0] <= heldout["avg_at_k"] <= w.target[1]:
        raise RunError(f"warm-up: held-out avg@{spec.eval.samples_per_problem} {heldout['avg_at_k']:.4f} after "
                       f"{steps_done} steps, not in warmup.target {list(w.target)}",
                       hint="raise warmup.steps (the most it may take) or widen warmup.target")
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, loaded)
    write_json_atomic(tmp / DONE, {"key": warmup_key(spec), "steps": steps_done,
                                   "wall_s": time.perf_counter() - start, "heldout": heldout, "checks": checks,
                                   "machine": machine_record()})
    shutil.rmtree(final, ignore_errors=True)  # a torn earlier attempt (no warmup.json)
    tmp.rename(final)


def _in_band(checks: list[dict], band: tuple[float, float], progress) -> bool:
    """Whether the last check landed in ``band``; a jump from below it to above it between two checks is an error."""
    now = checks[-1]
    if progress:
        progress.console.print(f"warm-up step {now['step']}: held-out avg@k {now['avg_at_k']:.4f} (target "
                               f"{band[0]:g}-{band[1]:g})", markup=False, highlight=False)
    if band[0] <= now["avg_at_k"] <= band[1]:
        return True
    if now["avg_at_k"] > band[1]:
        before = checks[-2] if len(checks) > 1 else {"step": 0, "avg_at_k": float("nan")}
        raise RunError(f"warm-up: held-out avg@k went from {before['avg_at_k']:.4f} at step {before['step']} to "
                       f"{now['avg_at_k']:.4f} at step {now['step']}, over warmup.target {list(band)}",
                       hint="lower warmup.check_every_steps or warmup.lr, or widen warmup.target")
    return False
