"""A journal with one run of a small plan and its probe timeline, as `kubeha apply` leaves them."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from kubeha.plan import Journal, Plan, RunAction, RunOutcome, Step, StepOutcome
from kubeha.probe.summary import ProbeRecord, summarize

PLAN = Plan(operation="migrate-masters", operation_id="migrate-masters-20261203-101010-abcd",
            arguments={"replace": "master1=spare1"}, created=datetime(2026, 12, 3, 10, 10, tzinfo=timezone.utc),
            inventory_digest="sha256:x",
            steps=(Step(id="copy-master-files-spare1", kind="master-files", title="Copy files to spare1",
                        hosts=("spare1",), estimated_seconds=20),
                   Step(id="start-kube-apiserver-spare1", kind="start", title="Start the apiserver on spare1",
                        hosts=("spare1",), estimated_seconds=30),
                   Step(id="remove-member-master1", kind="remove", title="Remove master1's member")))


def timeline(started: float, seconds: float) -> list[ProbeRecord]:
    """Every 50 ms on two paths; the VIP fails once at 2 s (cured by its retry)."""
    records = []
    for i in range(int(seconds / 0.05)):
        ts = started + i * 0.05
        records.append(ProbeRecord(ts=ts, path="node-proxy/worker1", ok=True, latency_ms=3 + i % 7))
        if i == 40:
            records += [ProbeRecord(ts=ts, path="vip", ok=False, latency_ms=1000, error="ConnectTimeout: timed out"),
                        ProbeRecord(ts=ts + 1, path="vip", ok=True, latency_ms=4, retry=True)]
        else:
            records.append(ProbeRecord(ts=ts, path="vip", ok=True, latency_ms=2 + i % 5))
    return records


def journal_with_a_run(tmp_path) -> Journal:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.record_plan(PLAN)
    run_id = journal.start_run(PLAN.operation_id, RunAction.APPLY)
    first = journal.start_step(run_id, PLAN.operation_id, "copy-master-files-spare1")
    journal.finish_step(first, StepOutcome.DONE, backups=["spare1:/var/backups/kubeha/x.copy-master-files-spare1"])
    second = journal.start_step(run_id, PLAN.operation_id, "start-kube-apiserver-spare1")
    journal.finish_step(second, StepOutcome.ROLLED_BACK, retries=2,
                        message="kube-apiserver on spare1 not ready: <script>alert(1)</script>")
    journal.finish_run(run_id, RunOutcome.FAILED, "stopped at start-kube-apiserver-spare1")
    started = journal.runs(PLAN.operation_id)[0].started.timestamp()
    records = timeline(started, 6)
    path = tmp_path / "probes" / "run-1.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r.as_json()) + "\n" for r in records) + '{"ts": 1, "pa')  # cut by a crash
    summary = summarize(records, started, started + 6)
    journal.record_probe(run_id, PLAN.operation_id, {**summary.as_json(), "targets": {"vip": "https://10.0.0.10:6443"}},
                         path)
    return journal
