"""lambda_t over data-parallel ranks: two real processes (gloo), the veRL plugin's calibrator with its DP
all-reduce; both ranks form the same lambda_t per micro-batch, equal to one process seeing both ranks' data."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]

RANK = """
import json, sys, torch, torch.distributed as dist
rank, init, profile = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
from backends.verl_backend.hooks import OccSettings, dp_all_reduce
settings = OccSettings.from_profile(profile)
calibrator = settings.calibrator(dp_all_reduce(dist.group.WORLD))
out = []
for step in range(2):
    calibrator.begin_step()
    for micro in range(3):
        d_rl, d_mtp, mask = (t[rank] for t in batch(step, micro))
        stats = calibrator.observe(d_rl, d_mtp, mask)
        out.append([stats.lam, stats.c_hat, stats.v_hat2, stats.n_tokens])
dist.barrier()
print("LAMBDAS" + json.dumps(out), flush=True)
import os
os._exit(0)  # gloo's teardown at interpreter exit can abort ("terminate called without an active exception")
"""

BATCH = """
def batch(step, micro):
    g = torch.Generator().manual_seed(1000 * step + micro)
    d_rl = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 0.01  # [rank, B, T]
    d_mtp = 0.5 * d_rl + torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 0.01
    mask = (torch.rand(2, 3, 5, generator=g) > 0.3).double()
    return d_rl, d_mtp, mask
"""


def _profile() -> dict:
    """The mimo7b_dapo_occ spec's worker profile (regime occ, the default estimator, summed over ranks)."""
    from occctl.spec import load_spec

    from backends.verl_backend.options import parse_options
    from backends.verl_backend.translate import worker_profile

    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml", ["mtp.regime=occ"])
    profile = worker_profile(spec, parse_options(spec.backend_options))
    assert profile["occctl_dp_reduce"] and profile["occctl_calibrator"]["scope"] == "step"
    return profile


PROFILE = _profile()

# Started when this module is collected, so the ranks' torch imports overlap the other tests.
_RENDEZVOUS = tempfile.mkdtemp(prefix="occctl-gloo-")
_RANKS = [subprocess.Popen([sys.executable, "-c", "import torch\n" + BATCH + RANK, str(rank),
                            f"file://{_RENDEZVOUS}/rendezvous", json.dumps(PROFILE)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"}) for rank in (0, 1)]


def test_both_ranks_form_the_single_process_lambda():
    outs = []
    for proc in _RANKS:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.split("LAMBDAS", 1)[1]))
    shutil.rmtree(_RENDEZVOUS, ignore_errors=True)
    assert outs[0] == outs[1], "every data-parallel rank must apply the same lambda_t"

    from backends.verl_backend.hooks import OccSettings

    namespace = {"torch": torch}
    exec(BATCH, namespace)
    reference = OccSettings.from_profile(PROFILE).calibrator()
    expected = []
    for step in range(2):
        reference.begin_step()
        for micro in range(3):
            d_rl, d_mtp, mask = (t.reshape(6, 5) for t in namespace["batch"](step, micro))  # both ranks' rows
            stats = reference.observe(d_rl, d_mtp, mask)
            expected.append([stats.lam, stats.c_hat, stats.v_hat2, stats.n_tokens])
    for got, want in zip(outs[0], expected):
        assert all(abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(got, want)), (got, want)
    assert len({round(row[0], 9) for row in expected}) > 1, "lambda_t must vary across micro-batches"
