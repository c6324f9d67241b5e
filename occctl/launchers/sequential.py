"""The sequential launcher: each cell of a study in turn, in this process."""

from __future__ import annotations

from rich.console import Console

from occctl import runner
from occctl.errors import OccError
from occctl.publication import publish_unpublished
from occctl.rundir import RunDir
from occctl.spec import Spec


def run_in_turn(specs: list[Spec], fresh: bool, console: Console) -> dict[str, str]:
    """The sequential launcher: one cell after another in this process. -> {failed cell: reason}."""
    failed: dict[str, str] = {}
    for i, spec in enumerate(specs, 1):
        if RunDir.named(spec.name).is_finished() and not fresh:
            publish_unpublished(spec)  # a cell that finished after its study was killed
            continue
        done = sum(1 for s in specs if RunDir.named(s.name).is_finished())
        console.rule(f"cell {i}/{len(specs)}: {spec.name}  ({done} done, {len(specs) - done} left)")
        try:
            runner.run_spec(spec, fresh=fresh, console=console)
        except OccError as e:  # this cell failed (a NaN loss, a missing file): the others still run
            failed[spec.name] = e.message.splitlines()[0]
            console.print(f"cell {spec.name} failed: {failed[spec.name]}", markup=False, highlight=False)
    return failed
