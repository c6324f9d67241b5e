"""`occctl run` on checkpoints whose MTP head is a native MTP layer (MiMo model.mtp_layers.0.*, DeepSeek-V3
model.layers.<n>.*, Qwen3-Next mtp.*): the run trains the loaded head, not a new one, exports the native layout
again, and `occctl eval` reads the export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from native_mtp import native_names, write_native_checkpoint  # tests/, on sys.path via its conftest
from safetensors import safe_open

from occctl.heldout import evaluate_heldout
from occctl.models import load_checkpoint, save_checkpoint
from occctl.occ.mtp_head import MtpHead
from occctl.runner import run_spec
from occctl.spec import load_spec
from occctl.tasks.arith import heldout_problems
from occctl.warmup import ensure_warm_start

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "tiny_occ.yaml"
SHORT = ["model.preset=null", "train.steps=2", "eval.samples_per_problem=1", "train.prompts_per_generation=16"]

pytestmark = pytest.mark.slow


def native_keys(directory: Path) -> set[str]:
    with safe_open(str(directory / "model-mtp.safetensors"), framework="pt") as f:
        return set(f.keys())


def test_a_run_from_a_native_mtp_checkpoint_keeps_the_loaded_head(results_dir, tmp_path):
    tiny = load_spec(SPEC, ["name=warm"])
    # the tiny preset's CE warm-up (cached) has a trained head: a fresh head's acceptance is far below it
    source = save_checkpoint(tmp_path / "native", load_checkpoint(ensure_warm_start(tiny)))
    assert not (source / "mtp_head.safetensors").exists()
    assert "model.mtp_layers.0.input_proj.weight" in native_keys(source)

    spec = load_spec(SPEC, ["name=native", f"model.path={source}", *SHORT])
    summary = run_spec(spec)

    loaded = load_checkpoint(source, new_head_if_missing=False)
    heldout = heldout_problems(spec.task)
    args = (heldout, spec.eval.samples_per_problem, spec.eval.temperature, spec.train.max_new_tokens)
    expected = evaluate_heldout(loaded, *args, seed=spec.train.seed)["mtp_acceptance"]
    loaded.mtp_head = MtpHead.for_model(loaded.model)
    fresh = evaluate_heldout(loaded, *args, seed=spec.train.seed)["mtp_acceptance"]
    assert summary["mtp_acceptance_before"] == pytest.approx(expected, abs=1e-9)
    # how far the warm-up's head is ahead of a fresh one depends on where the warm-up ends, which differs between
    # machines (held-out 0.06-0.26 after the same 550 steps); 0.1 is 20 of 200 problems' drafts
    assert expected > fresh + 0.1, (expected, fresh)

    final = Path(summary["checkpoint"])
    assert native_keys(final) == native_keys(source)
    assert json.loads((final / "config.json").read_text())["num_nextn_predict_layers"] == 1

    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    proc = subprocess.run([sys.executable, "-m", "occctl", "eval", "--run", "native", "--suite", "tiny",
                           "--limit", "20"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((results_dir / "runs" / "native" / "eval" / "tiny").glob("results_*.json")).read_text())
    assert result["mtp_acceptance"] == pytest.approx(summary["mtp_acceptance_after"], abs=0.1)  # 20 of 200 problems


@pytest.mark.parametrize("family", ["deepseek", "qwen3_next"])
def test_a_moe_familys_native_head_is_the_one_trained_and_exported(results_dir, tmp_path, family):
    tensors = write_native_checkpoint(tmp_path, family)  # random values: far from what a new head would copy
    spec = load_spec(SPEC, [f"name={family}", f"model.path={tmp_path}", *SHORT])
    summary = run_spec(spec)

    loaded = load_checkpoint(tmp_path, new_head_if_missing=False)
    args = (heldout_problems(spec.task), spec.eval.samples_per_problem, spec.eval.temperature,
            spec.train.max_new_tokens)
    assert summary["mtp_acceptance_before"] == evaluate_heldout(loaded, *args, seed=spec.train.seed)["mtp_acceptance"]

    with safe_open(str(Path(summary["checkpoint"]) / "model-mtp.safetensors"), framework="pt") as f:
        final = {k: f.get_tensor(k) for k in f.keys()}
    assert final.keys() == tensors.keys()
    moved = max(float((final[k] - v).abs().max()) for k, v in tensors.items())
    assert moved < 0.01, moved  # two optimizer steps at lr 2e-4 from the loaded tensors
    own, block, template, _ = native_names(family, loaded.model.config.num_hidden_layers)
    trunk = loaded.model.model.layers[template].state_dict()  # what a new head's block would start from
    key = "input_layernorm.weight"
    assert float((tensors[block + key] - trunk[key]).abs().max()) > 0.1
