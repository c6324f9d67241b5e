"""The names occctl accepts, and nothing else: a leaf module every other module may import (no occctl imports).

* ``BACKENDS``: backend name -> ``"module:Class"``, imported on first use (``occctl.backend.get_backend``);
* ``TASK_GRADERS``: task name -> the grader keys it accepts, its default first (the tasks themselves are
  ``occctl.tasks.TASKS``; a test checks that both name the same tasks and graders).

``occctl.spec`` validates ``backend``, ``task.name`` and ``task.grader`` against these names without importing the
backends or the tasks.
"""

from __future__ import annotations

BACKENDS: dict[str, str] = {
    "trl": "backends.trl_backend.adapter:TrlBackend",
    "verl": "backends.verl_backend.adapter:VerlBackend",
}

TASK_GRADERS: dict[str, tuple[str, ...]] = {
    "arith": ("exact_match@1",),
    "chain": ("final_sum@1",),
    "dataset": ("math_verify@1", "deepscaler@2", "deepscaler_think@2", "verl_math_dapo@1"),
}
