"""Where a report's runs started and what ran them: the **Start and machine** section that ends table.md.

Read from each compared run's own folder (``results/runs/<name>/``): ``summary.json`` names the warm-up checkpoint
the run started from (``warm_start``: a cache folder, or null), whose ``warmup.json`` says how it was trained
(key, steps, held-out, machine); ``env.json`` says where the run itself ran (CPU, Python, packages, git SHA). Runs
that share a start or an environment share a line, so a finding that depends on the machine shows it. A run whose
folder is not on this machine (its MLflow record only) is counted, never an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occctl.errors import SpecError
from occctl.jsonio import number, read_object
from occctl.rundir import WARMUP_RECORD, RunDir, RunFileError
from occctl.spec import Spec


@dataclass(frozen=True)
class RunOrigin:
    """One run's start (a line), environment (a line, without its git SHA) and git SHA."""

    start: str
    environment: str
    git_sha: str


@dataclass
class StartsAndMachines:
    """The compared runs' distinct starts and environments, each with how many runs it holds."""

    starts: Counter = field(default_factory=Counter)  # start line -> runs
    environments: dict[str, Counter] = field(default_factory=dict)  # environment line -> short git SHA -> runs
    folders_not_here: int = 0


def collect_starts_and_machines(names: list[str | None]) -> StartsAndMachines:
    """The starts and environments of the runs ``names`` (in the order they are first met)."""
    found = StartsAndMachines()
    for name in names:
        origin = read_origin(name)
        if origin is None:
            found.folders_not_here += 1
            continue
        found.starts[origin.start] += 1
        found.environments.setdefault(origin.environment, Counter())[origin.git_sha] += 1
    return found


def read_origin(name: str | None) -> RunOrigin | None:
    """The start and environment recorded in run ``name``'s folder; None when that folder is not here."""
    try:
        run = RunDir.named(name or "")
    except SpecError:  # an MLflow run name that no run folder can have
        return None
    if not run.exists():
        return None
    env = read_object(run.env_file)
    return RunOrigin(describe_start(read_object(run.summary_file) or {}, read_spec_or_none(run)),
                     describe_environment(env), str((env or {}).get("git_sha") or "unknown")[:7])


def read_spec_or_none(run: RunDir) -> Spec | None:
    try:
        return run.read_spec()
    except RunFileError:
        return None


def describe_start(summary: dict[str, Any], spec: Spec | None) -> str:
    """``no warm-up``, ``warm-up <key>: record missing (…)`` or the warm-up's key, steps, held-out, band and machine
    (the cache folder's name, never its path: a committed table must not depend on where a machine keeps it)."""
    if "warm_start" not in summary:
        return "start not recorded (summary.json has no warm_start)"
    if summary["warm_start"] is None:
        return "no warm-up"
    folder = Path(str(summary["warm_start"]))
    record = read_object(folder / WARMUP_RECORD)
    if record is None:
        return f"warm-up {folder.name}: record missing (its cache folder is not here)"
    return "; ".join([describe_warmup(record, spec), describe_warmup_machine(record.get("machine"))])


def describe_warmup(record: dict[str, Any], spec: Spec | None) -> str:
    heldout = record.get("heldout") if isinstance(record.get("heldout"), dict) else {}
    k = spec.eval.samples_per_problem if spec else "k"
    text = (f"warm-up {record.get('key', '?')}: {record.get('steps', '?')} steps, held-out "
            f"avg@{k} {_fraction(heldout.get('avg_at_k'))}, greedy {_fraction(heldout.get('greedy'))}")
    band = spec.warmup.target if spec else None
    return text + (f", band warmup.target {band[0]:g}–{band[1]:g}" if band else "")


def describe_warmup_machine(machine: Any) -> str:
    if not isinstance(machine, dict):
        return "trained on a machine not recorded"
    where = _cores_and_threads(machine)
    return (f"trained on {machine.get('cpu') or 'an unnamed CPU'}" + (f" ({where})" if where else "")
            + "".join(f", {p}" for p in _packages(machine.get("packages"))))


def describe_environment(env: dict[str, Any] | None) -> str:
    """CPU (cores and torch threads when recorded), Python on its platform, and the installed packages, from
    ``env.json``."""
    if env is None:
        return "environment not recorded (env.json missing)"
    cpu = env.get("cpu") or "CPU not recorded"
    where = _cores_and_threads(env)
    python = f"python {env.get('python') or '?'}" + (f" on {env['platform']}" if env.get("platform") else "")
    return "; ".join([cpu + (f" ({where})" if where else ""), python, ", ".join(_packages(env.get("packages")))])


def starts_and_machines_markdown(found: StartsAndMachines) -> str:
    """The **Start and machine** section: one line per distinct start, one per distinct environment."""
    lines = ["", "**Start and machine**", ""]
    if found.starts:
        lines += ["Started from:", ""] + [f"- {start} ({_runs(n)})" for start, n in found.starts.items()] + [""]
        lines += ["Ran on:", ""] + [f"- {environment}; git {_git(shas)}"
                                    for environment, shas in found.environments.items()] + [""]
    if found.folders_not_here:
        lines += [f"Run folder not here (MLflow store only): {_runs(found.folders_not_here)}, start and machine "
                  "unknown.", ""]
    return "\n".join(lines)


def starts_and_machines_columns(found: StartsAndMachines) -> dict[str, list]:
    """The same records as table columns (``kind``, ``record``, ``runs``) for the MLflow report run."""
    rows = [("start", start, n) for start, n in found.starts.items()]
    rows += [("environment", f"{environment}; git {_git(shas)}", sum(shas.values()))
             for environment, shas in found.environments.items()]
    rows += [("folder not here", "", found.folders_not_here)] if found.folders_not_here else []
    return {"kind": [r[0] for r in rows], "record": [r[1] for r in rows], "runs": [r[2] for r in rows]}


def _fraction(value: Any) -> str:
    x = number(value)
    return "?" if x != x else f"{x:.3f}"  # NaN: null or missing


def _cores_and_threads(record: dict[str, Any]) -> str:
    """``2 cores, 1 torch thread`` from a record's ``cores`` and ``torch_threads`` (each only when recorded)."""
    counts = ((record.get("cores"), "core"), (record.get("torch_threads"), "torch thread"))
    return ", ".join(_count(n, unit) for n, unit in counts if n is not None)


def _packages(packages: Any) -> list[str]:
    """``name version`` of each installed package (a null version: not installed)."""
    if not isinstance(packages, dict):
        return []
    return [f"{name} {version}" for name, version in packages.items() if version]


def _git(shas: Counter) -> str:
    return ", ".join(f"{sha} ({_runs(n)})" for sha, n in shas.most_common())


def _runs(n: int) -> str:
    return _count(n, "run")


def _count(n: Any, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"
