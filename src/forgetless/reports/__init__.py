"""Reports: the run folder (metrics.json, CSV, plots) and the summary table."""
