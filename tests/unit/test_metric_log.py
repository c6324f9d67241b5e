"""MetricLog: what reaches MLflow after a resume — every step once, including a checkpoint never published."""

import json

from occctl.rundir import RunDir
from occctl.runner import MetricLog


class FakeTracker:
    def __init__(self, active=True):
        self.logged, self.active = [], active

    def log_rows(self, rows):
        self.logged.extend(row["step"] for row in rows)


def test_resume_publishes_checkpointed_steps_that_were_never_published(tmp_path):
    run = RunDir(tmp_path)
    metrics, record = run.metrics_file, run.tracking_file
    first = FakeTracker()
    log = MetricLog(run, first, None)
    for step in range(1, 10):
        log(step, {"loss": float(step)})
        if step == 4:
            log.commit(4)  # checkpoint 4 published
    log.close()  # killed after checkpoint 8 was written, before it was published
    assert first.logged == [1, 2, 3, 4] and json.loads(record.read_text())["published_step"] == 4

    second = FakeTracker()
    resumed = MetricLog(run, second, 8)  # resuming from checkpoint 8
    assert [r["step"] for r in resumed.history] == list(range(1, 9))  # step 9 is cut: it will be redone
    resumed(9, {"loss": 9.0})
    resumed.commit()
    resumed.close()
    assert second.logged == [5, 6, 7, 8, 9]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 10))


def test_a_worker_publishes_nothing_and_leaves_it_to_the_parent(tmp_path):
    run = RunDir(tmp_path)
    worker = FakeTracker(active=False)  # Tracker.recorded: a parallel study's worker
    log = MetricLog(run, worker, None)
    for step in range(1, 5):
        log(step, {"loss": float(step)})
    log.commit(4)
    log.close()
    assert worker.logged == [] and run.tracking_state().published_step == 0, "the parent publishes steps 1-4"
