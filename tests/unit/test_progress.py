"""Progress in logs: plain lines at round step intervals (and after a silence), a live bar only on a terminal."""

import io

from rich.console import Console

from occctl.progress import LineProgress, format_duration, progress_bar, round_interval


def test_round_intervals_give_about_ten_lines():
    assert [round_interval(n) for n in (1, 5, 10, 11, 40, 200, 1000, 3000)] == [1, 1, 1, 2, 5, 20, 100, 500]


def test_a_log_gets_plain_lines_with_the_step_and_an_eta():
    log = Console(file=io.StringIO(), width=40)  # not a terminal, and narrow: lines must not wrap
    with progress_bar(log) as progress:
        assert isinstance(progress, LineProgress)
        task = progress.add_task("RL occ", total=40, unit="step")
        for step in range(1, 41):
            progress.update(task, completed=step, description=f"RL occ  reward {step / 40:.3f}")
    lines = log.file.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"step {s}/40" for s in range(5, 41, 5)]
    assert lines[1].startswith("step 10/40  RL occ  reward 0.250  elapsed ") and "ETA " in lines[1]
    assert "ETA" not in lines[-1], "no ETA once done"


def test_slow_steps_still_print_after_a_silence_and_advance_counts():
    log = Console(file=io.StringIO())
    progress = LineProgress(log, max_silence_s=0.0)
    task = progress.add_task("grade", total=1000)
    for _ in range(3):
        progress.advance(task)
    assert [line.split("  ")[0] for line in log.file.getvalue().splitlines()] == ["1/1000", "2/1000", "3/1000"]


def test_a_terminal_gets_a_live_bar():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(progress_bar(terminal), LineProgress)


def test_durations():
    assert [format_duration(s) for s in (None, 4.6, 125, 3723)] == ["–", "5s", "2m05s", "1h02m"]
