"""What a worker runs: one cell of a study, from the spec its parent wrote into the run folder.

The worker writes its run folder (metrics.jsonl, checkpoints, summary.json) and its log, never MLflow: the parent
opened the cell's MLflow run and publishes the folder once the worker has ended (``occctl.publication.publish_run``).
The local launcher's forked processes call ``run_reporting`` (``occctl.launchers.local.cell_process``); Ray and submitit call
``run_cell``; ``OCCCTL_RESULTS_DIR=R OMP_NUM_THREADS=T python -m occctl.launchers.cell NAME LOG`` runs one by hand.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console


def run_cell(name: str, results: str, threads: int, log: str) -> dict[str, Any]:
    """Run (or resume) the cell ``name`` under the results root ``results`` with ``threads`` torch threads,
    appending its progress lines to ``log``. -> its summary."""
    os.environ["OCCCTL_RESULTS_DIR"] = results
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the tiny preset keeps torch's threads when this is set
    import torch

    torch.set_num_threads(threads)
    from occctl.rundir import RunDir
    from occctl.runner import run_spec

    spec = RunDir.named(name).read_spec()
    with open(log, "a", encoding="utf-8") as stream:
        console = Console(file=stream, force_terminal=False, width=160, soft_wrap=True)
        return run_spec(spec, console=console, publish=False)


def main(argv: list[str]) -> int:
    name, log = argv
    return run_reporting(name, os.environ["OCCCTL_RESULTS_DIR"], int(os.environ["OMP_NUM_THREADS"]), log)


def run_reporting(name: str, results: str, threads: int, log: str) -> int:
    """``run_cell``, with an occctl error printed as one line (the parent reports the log's last line). -> exit code"""
    from occctl.errors import OccError

    try:
        run_cell(name, results, threads, log)
    except OccError as e:
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
