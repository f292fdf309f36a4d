"""An operation's report: one self-contained HTML file from the journal and the probe."""

from kubeha.report.collect import known_operation, operation_report, read_timeline
from kubeha.report.html import OperationReport, ProbeTotals, RunProbe, probe_totals, render_report_html
from kubeha.report.plot import StepMark, probe_plot_svg

__all__ = ["OperationReport", "ProbeTotals", "RunProbe", "StepMark", "known_operation", "operation_report", "probe_plot_svg",
           "probe_totals", "read_timeline", "render_report_html"]
