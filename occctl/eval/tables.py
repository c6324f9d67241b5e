"""Re-export for the eval modules: the tables and the progress bar live in ``occctl.report``."""

from occctl.report.eval_tables import results_markdown, results_table, selfcheck_table  # noqa: F401
from occctl.report.progress import progress_bar  # noqa: F401
