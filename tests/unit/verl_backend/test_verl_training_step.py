"""veRL's real training step on CPU with the occctl plugin: ``TrainingWorker.infer_batch`` and ``train_mini_batch``
through ``MegatronEngine`` (``forward_backward_batch``, ``forward_step``, ``gptmodel_forward_model_engine``,
``postprocess_micro_batch_func``, Megatron's schedule) on a tiny config-built GPTModel with one MTP layer.

One process (``verl_training_step.py``) runs every case, with the plugin loaded as a launch loads it
(``VERL_USE_EXTERNAL_MODULES``) and the actor config ``occctl run --dry-run`` composes for the shipped specs (TP, PP,
CP set to 1, offloading off, lr 1e-3 so one step moves the weights visibly). The batch: 4 prompts x 2 samples,
ragged prompt and response lengths, an interior masked response token, GRPO advantages; two optimizer steps of two
micro-batches. GPU-only calls are replaced by the stand-ins listed in ``cpu_standins.STANDINS`` (each with the call
it replaces and what runs there on a GPU). A control run without ``VERL_USE_EXTERNAL_MODULES`` must fail.

Skipped unless veRL and megatron-core are importable (CI's veRL venv has both).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("megatron.core")
pytest.importorskip("trl")

from occctl.spec import load_spec  # noqa: E402
from trl_stub import stub_trainer  # noqa: E402  (tests/, on sys.path via its conftest)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DRIVER = HERE / "verl_training_step.py"
TOL = 1e-5
GROUPS = {"trunk": "decoder.", "embeddings": "embedding.", "lm_head": "output_layer.", "mtp": "mtp."}

# name -> (spec, --set overrides, thd, clip_grad); the first case fixes every case's initial weights (MTP on)
CASES = {
    "detach_dapo_bshd": ("mimo7b_dapo_occ", ["mtp.regime=detach"], False, 1.0),
    "off_dapo_bshd": ("mimo7b_dapo_occ", ["mtp.enabled=false"], False, 1.0),
    "detach_dapo_bshd_noclip": ("mimo7b_dapo_occ", ["mtp.regime=detach"], False, 1e9),
    "off_dapo_bshd_noclip": ("mimo7b_dapo_occ", ["mtp.enabled=false"], False, 1e9),
    "ce_dapo_bshd": ("mimo7b_dapo_occ", ["mtp.regime=ce"], False, 1.0),
    "policy_dapo_bshd": ("mimo7b_dapo_occ", ["mtp.regime=policy"], False, 1.0),
    "occ_dapo_bshd": ("mimo7b_dapo_occ", ["mtp.regime=occ"], False, 1.0),
    "occ_gspo_bshd": ("mimo7b_gspo_occ", ["mtp.regime=occ"], False, 1.0),
    "detach_dapo_thd": ("mimo7b_dapo_occ", ["mtp.regime=detach"], True, 1.0),
    "off_dapo_thd": ("mimo7b_dapo_occ", ["mtp.enabled=false"], True, 1.0),
    "ce_dapo_thd": ("mimo7b_dapo_occ", ["mtp.regime=ce"], True, 1.0),
    "policy_dapo_thd": ("mimo7b_dapo_occ", ["mtp.regime=policy"], True, 1.0),
    "occ_dapo_thd": ("mimo7b_dapo_occ", ["mtp.regime=occ"], True, 1.0),
    "occ_gspo_thd": ("mimo7b_gspo_occ", ["mtp.regime=occ"], True, 1.0),
    "reference_dapo_thd": ("mimo7b_dapo_occ", ["mtp.regime=occ", "mtp.occ={preset: reference}"], True, 1.0),
    "detach_gspo_thd": ("mimo7b_gspo_occ", ["mtp.regime=detach"], True, 1.0),
    "ce_gspo_thd": ("mimo7b_gspo_occ", ["mtp.regime=ce"], True, 1.0),
    "policy_gspo_thd": ("mimo7b_gspo_occ", ["mtp.regime=policy"], True, 1.0),
}
PLUGIN_TERM = [n for n in CASES if n.split("_")[0] in ("ce", "policy", "occ", "reference")]


def compose(spec_name: str, sets: list[str], clip_grad: float, run_dir: Path) -> dict:
    """The actor and model nodes of the veRL config the dry run composes for the spec, fitted to one CPU process."""
    from backends.verl_backend.adapter import VerlBackend

    spec = load_spec(REPO / "specs" / f"{spec_name}.yaml", sets)
    config = VerlBackend().prepare(spec, run_dir).native_config["config"]["actor_rollout_ref"]
    actor = config["actor"]
    actor["megatron"].update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, context_parallel_size=1,
                             expert_model_parallel_size=1, param_offload=False, optimizer_offload=False)
    actor["optim"].update(lr=1e-3, clip_grad=clip_grad)
    return {"actor": actor, "model": config["model"], "temperature": spec.train.temperature}


def run_driver(cases: list[dict], tmp: Path, plugin: bool) -> subprocess.CompletedProcess:
    (tmp / "cases.json").write_text(json.dumps(cases))
    (tmp / "out").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               MASTER_PORT=str(29500 + os.getpid() % 500))
    if plugin:
        env["VERL_USE_EXTERNAL_MODULES"] = "backends.verl_backend.plugin"
    return subprocess.run([sys.executable, str(DRIVER), str(tmp / "cases.json"), str(tmp / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verl_step")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCCCTL_RESULTS_DIR", str(tmp / "results"))
        cases = [{"name": name, "thd": thd, **compose(spec, sets, clip, tmp / "run" / name)}
                 for name, (spec, sets, thd, clip) in CASES.items()]
    done = run_driver(cases, tmp, plugin=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return {name: torch.load(tmp / "out" / f"{name}.pt", weights_only=False) for name in CASES}


def test_without_the_plugin_the_launch_fails(runs, tmp_path):
    """The control: the same driver and config without ``VERL_USE_EXTERNAL_MODULES`` stops at the first loss."""
    spec, sets, thd, clip = CASES["occ_dapo_bshd"]
    case = {"name": "occ_dapo_bshd", "thd": thd, **compose(spec, sets, clip, tmp_path / "run")}
    done = run_driver([case], tmp_path, plugin=False)
    assert done.returncode != 0
    assert "Unsupported loss mode: occctl_vanilla" in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("name", list(CASES))
def test_loss_is_verls_pg_loss_plus_the_plugins_term(runs, name):
    """Per optimizer step, veRL's logged ``loss`` (the sum of the micro-batch losses) is its ``pg_loss`` plus the
    plugin's ``mtp/loss`` (the sum of the terms it added); no term outside the plugin's regimes (detach's native
    MTP loss is gradient-only, as veRL adds it)."""
    m, calls = runs[name]["metrics"], runs[name]["calls"]
    assert len(m["loss"]) == 2 and len(calls) == 4
    assert all(c["in_training_step"] for c in calls) == (not name.startswith("off")), "the plugin marks the steps"
    mtp = m.get("mtp/loss", [0.0, 0.0])
    for step in range(2):
        assert abs(m["loss"][step] - m["actor/pg_loss"][step] - mtp[step]) <= 1e-6, (name, m)
        terms = [c["term"] for c in calls[2 * step:2 * step + 2]]
        assert abs(mtp[step] - sum(terms)) <= 1e-6, (name, mtp, terms)
    if name in PLUGIN_TERM:  # (the reference preset's lambda is small: its mean runs over 8192 slots per sequence)
        assert abs(mtp[1]) > (1e-7 if name.startswith("reference") else 1e-4), "a term on the second step"
    else:
        assert "mtp/loss" not in m and all(c["term"] == 0.0 for c in calls)


def moved_from(a: dict, b: dict) -> dict[str, bool]:
    """Per parameter group: does any tensor of run ``a`` end differently from run ``b`` (both from one start)?"""
    out = {}
    for group, prefix in GROUPS.items():
        keys = [k for k in a["after"] if k.startswith(prefix)]
        out[group] = any(not torch.allclose(a["after"][k], b["after"].get(k, a["before"][k]), atol=1e-6, rtol=0)
                         for k in keys)
    return out


@pytest.mark.parametrize("fmt", ["bshd", "thd"])
def test_which_parameter_groups_the_mtp_term_reaches(runs, fmt):
    """Against the run with MTP off (same start, batch, old log-probs): ce, policy and occ move trunk, embeddings and
    lm_head differently; detach does not, and trains the MTP block (the main model differs only through veRL's joint
    gradient-norm clip, which the noclip pair switches off)."""
    off = runs[f"off_dapo_{fmt}"]
    assert all(k.startswith(tuple(GROUPS.values())) for k in off["after"])
    for regime in ("ce", "policy", "occ"):
        assert moved_from(runs[f"{regime}_dapo_{fmt}"], off) == dict.fromkeys(GROUPS, True), regime
    detach = runs[f"detach_dapo_{fmt}"]
    mtp_keys = [k for k in detach["after"] if k.startswith("mtp.")]
    assert any(not torch.equal(detach["after"][k], detach["before"][k]) for k in mtp_keys), "detach trains MTP"
    if fmt == "bshd":
        assert moved_from(runs["detach_dapo_bshd_noclip"], runs["off_dapo_bshd_noclip"]) == {
            "trunk": False, "embeddings": False, "lm_head": False, "mtp": True}
        clipped = moved_from(detach, off)
        assert clipped["trunk"], "veRL clips the MTP block's gradient jointly with the model's (grad_clip 1.0 binds)"
        assert runs["detach_dapo_bshd"]["metrics"]["grad_norm"] != off["metrics"]["grad_norm"]


@pytest.mark.parametrize("case", ["detach_dapo", "off_dapo", "ce_dapo", "policy_dapo", "occ_dapo", "occ_gspo"])
def test_packed_thd_equals_padded_bshd(runs, case):
    """``use_remove_padding: true`` (thd, the shipped specs) and bshd give the same losses, lambda_t and weights."""
    bshd, thd = runs[f"{case}_bshd"], runs[f"{case}_thd"]
    for key in ("loss", "actor/pg_loss", "mtp/loss", "occ/lambda", "grad_norm"):
        for a, b in zip(bshd["metrics"].get(key, []), thd["metrics"].get(key, []), strict=True):
            assert abs(a - b) <= TOL, (case, key, a, b)
    for k, v in bshd["after"].items():
        assert torch.allclose(v, thd["after"][k], atol=TOL, rtol=0), (case, k, (v - thd["after"][k]).abs().max())
    if case.startswith(("occ", "policy")):
        assert bshd["metrics"]["mtp/loss"][1] != 0.0 and any(lam != 0 for lam in bshd["metrics"]["occ/lambda"])


def response_logprobs(call: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask, main head's log-probs, MTP head's log-probs), [B, R] float64, of the response tokens of a recorded
    micro-batch (veRL's layout: main at P + j - 1, MTP at P + j - 2)."""
    from backends.verl_backend.hooks import response_values, sequence_lengths

    nested = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)  # noqa: E731
    p, r = sequence_lengths({"prompts": call["prompts"], "responses": call["responses"],
                             "attention_mask": call["attention_mask"]})
    width = call["response_mask"].shape[1]
    main, _ = response_values(nested(call["log_probs"]), p, r, width, lag=1)
    mtp, _ = response_values(nested(call["mtp_log_probs"]), p, r, width, lag=2)
    return call["response_mask"].double(), main.double(), mtp.double()


def trl_terms(spec, calls) -> tuple[list[float], list[float]]:
    """The TRL backend's ``MtpGRPOTrainer._mtp_term`` (a stub trainer, as in test_verl_equality) on the micro-batches
    veRL's actor loss received: (MTP term per micro-batch, lambda_t per micro-batch)."""
    from backends.trl_backend.trainer import mtp_settings
    from backends.trl_backend.hooks import MtpGRPOTrainer

    settings, ga = mtp_settings(spec), 2
    current = {}
    stub = stub_trainer(settings, ga, spec.train.temperature, current)
    terms = []
    for n, c in enumerate(calls):
        stub.state.global_step = n // ga
        mask, logp_main, logp_mtp = response_logprobs(c)  # [B, R] each
        width = mask.shape[1]
        current["logits"] = logits_for(logp_mtp, c["responses"][:, :width], spec.train.temperature)
        inputs = {"prompt_ids": c["prompts"], "prompt_mask": torch.ones_like(c["prompts"]),
                  "completion_ids": c["responses"][:, :width], "completion_mask": mask,
                  "old_per_token_logps": c["old_log_probs"].double(), "advantages": c["advantages"][:, 0].double(),
                  "num_items_in_batch": torch.tensor(float(c["batch_num_tokens"]))}
        terms.append(float(MtpGRPOTrainer._mtp_term(stub, None, inputs, {"hidden": None, "position_ids": None},
                                                    logp_main * mask, None)))
    return terms, stub._metrics["train"]["occ/lambda"]


def logits_for(logp: torch.Tensor, ids: torch.Tensor, temperature: float, vocab: int = 16) -> torch.Tensor:
    """Logits [B, R, V] whose log-softmax at temperature T is ``logp`` at ``ids`` (the rest share the remainder)."""
    logp = logp.clamp(max=-1e-9)
    rest = torch.log(-torch.expm1(logp) / (vocab - 1))  # [B, R]
    z = rest[..., None].expand(*logp.shape, vocab).clone()
    z.scatter_(-1, ids[..., None], logp[..., None])
    return z * temperature


@pytest.mark.parametrize("name", ["occ_dapo_thd", "policy_dapo_thd", "occ_gspo_thd", "policy_gspo_thd",
                                  "occ_dapo_bshd"])
def test_lambda_and_term_equal_the_trl_backends_on_the_same_batch(runs, name):
    """The log-probs veRL's real forward produced, fed to the TRL backend's hook: same MTP term and lambda_t per
    micro-batch (lambda 0 on the first optimizer step after the generation, as on TRL)."""
    spec_name, sets, _, _ = CASES[name]
    spec = load_spec(REPO / "specs" / f"{spec_name}.yaml", sets)
    calls = runs[name]["calls"]
    trl, trl_lams = trl_terms(spec, calls)
    verl_lams = [c["metrics"]["occ/lambda"] for c in calls]
    for a, b in zip(trl, [c["term"] for c in calls], strict=True):
        assert abs(a - b) <= TOL, (trl, [c["term"] for c in calls])
    for a, b in zip(trl_lams, verl_lams, strict=True):
        assert abs(a - b) <= TOL, (trl_lams, verl_lams)
    assert verl_lams[:2] == [0.0, 0.0] and all(lam != 0 for lam in verl_lams[2:])


def test_reference_preset_forms_the_authors_lambda_per_micro_batch(runs):
    """``mtp.occ.preset: reference``: each micro-batch alone, lambda = 0.1 x the mean over the padded
    [B, max_new_tokens] batch of dRL dMTP / (dMTP^2 + eps), from the log-probs of veRL's real forward."""
    width_padded = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml").train.max_new_tokens
    lambdas = []
    for c in runs["reference_dapo_thd"]["calls"]:
        mask, main, mtp = response_logprobs(c)  # [B, R] each
        d_rl = (main - c["old_log_probs"].double()) * mask  # [B, R]
        d_mtp = (mtp - c["old_log_probs"].double()) * mask
        theirs = 0.1 * float((d_rl * d_mtp / (d_mtp ** 2 + 1e-8)).sum()) / (mask.shape[0] * width_padded)
        assert c["metrics"]["occ/lambda"] == pytest.approx(theirs, rel=1e-4, abs=1e-9)
        lambdas.append(c["metrics"]["occ/lambda"])
    assert lambdas[0] == 0.0 and lambdas[2] != lambdas[3] and lambdas[2] != 0.0
