"""Short runs of the embedded default for the end-to-end tests (importable: tests/ is on sys.path via conftest)."""

from pathlib import Path

from occctl.runner import run_spec
from occctl.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "tiny_occ.yaml"
FAST = ["eval.samples_per_problem=1", "train.prompts_per_generation=16"]


def run_tiny(name: str, *overrides: str) -> dict:
    """`occctl run specs/tiny_occ.yaml` in-process with fast settings; -> its summary."""
    return run_spec(load_spec(SPEC, [f"name={name}", *FAST, *overrides]))
