"""An operation's report: one self-contained HTML file from the journal and the probe."""

from kubeha.report.collect import operation_report, read_timeline
from kubeha.report.html import OperationReport, RunProbe, render_report_html
from kubeha.report.plot import StepMark, probe_plot_svg

__all__ = ["OperationReport", "RunProbe", "StepMark", "operation_report", "probe_plot_svg", "read_timeline",
           "render_report_html"]
