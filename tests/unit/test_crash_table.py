"""docs/reliability.md's crash table (migrate-masters, change-endpoint) is what the lab's
sweeps recorded (tests/lab/results/crash/); `KUBEHA_WRITE_DOCS=1 pytest
tests/unit/test_crash_table.py` writes it."""

from __future__ import annotations

import os

from helpers.crash_points import TABLE_START, CrashCase, crash_points, crash_table, read_cases, write_docs
from helpers.fault_table import END, RELIABILITY_MD
from helpers.plans import lab_cluster, migrate


def test_the_table_counts_cases_per_operation_and_layout():
    cases = [CrashCase("migrate-masters", "kubeadm", way, point, 40, ok, 50.0, "" if ok else "resume failed", day)
             for way, point, ok, day in (("forward", "after snapshot", True, "2026-12-03"),
                                         ("back", "after snapshot", True, "2026-12-03"),
                                         ("forward", "during x", False, "2026-12-04"))]
    assert crash_table(cases).splitlines()[2] == (
        "| migrate-masters | kubeadm | 80 | 3 | 2 | 2026-12-03, 2026-12-04 | forward during x: resume failed |")


def test_a_plan_has_a_point_after_every_step_but_the_last_and_during_every_host_change():
    plan = migrate(lab_cluster(), "master1=spare1")
    points = [str(p) for p in crash_points(plan)]
    assert points[:3] == ["during snapshot", "after snapshot", "during copy-master-files-spare1"]
    assert f"after {plan.steps[-2].id}" in points and f"after {plan.steps[-1].id}" not in points
    assert len([p for p in points if p.startswith("after")]) == len(plan.steps) - 1


def test_the_docs_show_what_the_lab_recorded():
    if os.environ.get("KUBEHA_WRITE_DOCS") == "1":
        write_docs()
    assert TABLE_START + crash_table(read_cases()) + END in RELIABILITY_MD.read_text(), (
        "docs/reliability.md is out of date: KUBEHA_WRITE_DOCS=1 pytest tests/unit/test_crash_table.py writes it")
