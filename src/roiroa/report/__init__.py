"""Outputs of a run: the run folder (JSON, CSV, NPZ, PNG, the HTML report) and the terminal summary."""

from roiroa.report.figures import write_examples_figure
from roiroa.report.html import render_report, write_report
from roiroa.report.run_folder import RUN_FILES, write_run
from roiroa.report.tables import headline_table, metric_rows, per_image_rows

__all__ = ["RUN_FILES", "write_run", "write_examples_figure", "headline_table", "metric_rows", "per_image_rows"]
__all__ += ["write_report", "render_report"]
