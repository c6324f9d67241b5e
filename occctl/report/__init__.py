"""Everything occctl shows or writes about results: study comparisons (``comparison``), figures (``plots``), the
report folder (``writer``), eval result tables (``eval_tables``), and progress while something runs
(``progress``). Pure presentation: the data comes from results/ and MLflow (``occctl.tracking``)."""
