"""One operation's report as one self-contained HTML file (pure: data in, markup out).

The plan's arguments and steps, each step's hosts, attempts, duration and outcome; each
run (apply, resume, rollback) with its probe: a summary per path, etcd write continuity
and the timeline plot (``kubeha.report.plot``); the check taken when the report was made;
what was backed up where. No script, no external file: it opens anywhere, also offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2

from kubeha.checks import CheckResult
from kubeha.plan import Plan, RunRecord, StepRecord
from kubeha.probe.summary import ProbeRecord
from kubeha.report.plot import StepMark, probe_plot_svg

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("kubeha.report", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=True,  # step messages and errors come from hosts
)


@dataclass(frozen=True)
class RunProbe:
    """The probe of one run: its stored summary (JSON) and its timeline's records."""

    summary: Mapping[str, object]
    records: Sequence[ProbeRecord] = ()
    timeline_path: str | None = None


@dataclass(frozen=True)
class OperationReport:
    plan: Plan
    runs: Sequence[RunRecord]
    steps: Sequence[StepRecord]  # every attempt, in the order they started
    probes: Mapping[int, RunProbe]  # by run id
    generated: datetime
    checks: Sequence[CheckResult] | None = None  # the check taken for the report
    check_error: str | None = None  # why there is none
    notes: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class StepRow:
    number: int
    step_id: str
    title: str
    hosts: str
    attempts: int
    retries: int
    seconds: float | None
    estimated: int
    outcome: str
    message: str


@dataclass(frozen=True)
class ProbeTotals:
    """An operation's probe over all its runs."""

    requests: int
    failed: int
    failed_after_retry: int
    vip_longest_gap_ms: float | None  # None: no VIP path
    etcd_writes_lost: int | None  # None: some run could not read its writes back


def probe_totals(summaries: Iterable[Mapping[str, Any]]) -> ProbeTotals:
    """The totals of stored probe summaries (``journal.probes``)."""
    requests = failed = after_retry = 0
    gap: float | None = None
    lost: int | None = 0
    for summary in summaries:
        for path in summary["paths"]:
            requests += path["requests"]
            failed += path["failures"]
            after_retry += path["failures_after_retry"]
            if path["path"] == "vip":
                gap = max(gap or 0.0, path["longest_gap_ms"])
        etcd = summary.get("etcd")
        if etcd and lost is not None:
            lost = None if etcd["lost"] is None else lost + len(etcd["lost"])
    return ProbeTotals(requests, failed, after_retry, gap, lost)


def _seconds(started: datetime, finished: datetime | None) -> float | None:
    return None if finished is None else (finished - started).total_seconds()


def step_rows(plan: Plan, steps: Sequence[StepRecord]) -> list[StepRow]:
    """One row per planned step: its last attempt's outcome and message, the time of every attempt."""
    rows = []
    for number, step in enumerate(plan.steps, 1):
        attempts = [s for s in steps if s.step_id == step.id]
        last = attempts[-1] if attempts else None
        times = [_seconds(s.started, s.finished) for s in attempts]
        rows.append(StepRow(
            number=number, step_id=step.id, title=step.title, hosts=", ".join(step.hosts) or "cluster",
            attempts=len(attempts), retries=sum(s.retries for s in attempts),
            seconds=sum(t for t in times if t is not None) if attempts else None,
            estimated=step.estimated_seconds,
            outcome="not run" if last is None else (last.outcome.value if last.outcome else "cut short"),
            message=last.message if last else ""))
    return rows


def run_marks(run: RunRecord, steps: Sequence[StepRecord]) -> list[StepMark]:
    return [StepMark(s.started.timestamp(), s.step_id, s.outcome.value if s.outcome else None)
            for s in steps if s.run_id == run.run_id]


def run_plot(run: RunRecord, probe: RunProbe, steps: Sequence[StepRecord]) -> str | None:
    """The run's timeline plot, or None without records."""
    if not probe.records:
        return None
    started = float(probe.summary.get("started") or min(r.ts for r in probe.records))  # type: ignore[arg-type]
    ended = float(probe.summary.get("ended") or max(r.done for r in probe.records))  # type: ignore[arg-type]
    return probe_plot_svg(probe.records, run_marks(run, steps), started, ended)


def backups(steps: Sequence[StepRecord]) -> list[tuple[str, str]]:
    """(step id, host:directory) for every backup a step took, each once."""
    seen = dict.fromkeys((s.step_id, where) for s in steps for where in s.backups)
    return list(seen)


def render_report_html(report: OperationReport) -> str:
    return _TEMPLATES.get_template("report.html.j2").render(
        report=report, plan=report.plan, rows=step_rows(report.plan, report.steps),
        runs=[(run, report.probes.get(run.run_id), run_plot(run, report.probes[run.run_id], report.steps)
               if run.run_id in report.probes else None) for run in report.runs],
        backups=backups(report.steps))


__all__ = ["OperationReport", "ProbeTotals", "RunProbe", "StepRow", "backups", "probe_totals", "render_report_html", "step_rows"]
