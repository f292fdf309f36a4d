"""Gathering an operation's report from the journal and the probe's timeline files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from kubeha.checks import CheckResult
from kubeha.errors import InputError, as_typed
from kubeha.plan import Journal
from kubeha.probe.summary import ProbeRecord
from kubeha.report.html import OperationReport, RunProbe


def read_timeline(path: Path) -> list[ProbeRecord]:
    """A probe timeline (one JSON record per line); a line cut short by a crash is skipped."""
    records = []
    with path.open() as lines:
        for line in lines:
            try:
                records.append(ProbeRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue
    return records


def known_operation(journal: Journal, operation_id: str) -> None:
    """InputError (one line) unless the journal has the operation."""
    if operation_id not in journal.operation_ids():
        raise InputError(f"the journal {journal.path} has no operation {as_typed(operation_id)}: "
                         "`kubeha journal` lists the ones it has")


def operation_report(journal: Journal, operation_id: str, *, checks: Sequence[CheckResult] | None = None,
                     check_error: str | None = None) -> OperationReport:
    known_operation(journal, operation_id)
    probes, notes = {}, []
    for stored in journal.probes(operation_id):
        timeline = Path(stored.timeline_path) if stored.timeline_path else None
        records: list[ProbeRecord] = []
        if timeline is not None:
            try:
                records = read_timeline(timeline)
            except OSError as e:
                notes.append(f"the probe timeline of run {stored.run_id} cannot be read ({e.strerror}): "
                             "its plot is left out")
        probes[stored.run_id] = RunProbe(stored.summary, records, stored.timeline_path)
    return OperationReport(plan=journal.plan(operation_id), runs=journal.runs(operation_id),
                           steps=journal.steps(operation_id), probes=probes, generated=datetime.now(timezone.utc),
                           checks=checks, check_error=check_error, notes=tuple(notes))
