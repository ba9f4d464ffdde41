"""Outputs of every command, as pure functions of results (no model, no attack): the results folder, the HTML
report of any set of folders, the figures and the terminal tables."""

from roiroa.report.folder import claim_folder, release, write_folder
from roiroa.report.html import render_report, write_report
from roiroa.report.tables import metric_rows, terminal_table

__all__ = ["claim_folder", "release", "write_folder", "render_report", "write_report", "metric_rows", "terminal_table"]
