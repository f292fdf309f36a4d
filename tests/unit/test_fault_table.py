"""docs/reliability.md's "Faults during an operation" table is what the lab's fault tests
recorded (tests/lab/results/faults/). `KUBEHA_WRITE_DOCS=1 pytest tests/unit/test_fault_table.py`
writes it; the lab module tests/lab/test_faults.py rewrites it when it ends."""

from __future__ import annotations

import os

from helpers.fault_table import END, FAULTS, RELIABILITY_MD, START, FaultCase, docs_with_table, fault_table, read_records


def test_the_table_counts_cases_per_fault_and_quotes_what_stopped_runs_said():
    cases = [FaultCase("network-cut", "master2 cut mid-restart", "rolling-restart", "stopped, then resumed", 95.4,
                       True, True, "step x failed (rolled back): master2: no answer; after fixing it run kubeha resume o",
                       "2026-12-04"),
             FaultCase("network-cut", "worker1 cut", "rolling-restart", "completed", 40, False, True, "", "2026-12-04")]
    table = fault_table(cases).splitlines()
    assert table[2 + list(FAULTS).index("network-cut")] == (
        f"| {FAULTS['network-cut']} | rolling-restart | 2 | 1 | 2 | master2 cut mid-restart: stopped, then resumed, "
        "95 s (2026-12-04); worker1 cut: completed, 40 s (2026-12-04) |")
    assert table[2] == f"| {FAULTS['etcd-member-killed']} | - | 0 | - | - | not run yet |"
    assert table[-1] == (f"- {FAULTS['network-cut']}, master2 cut mid-restart: `` step x failed (rolled back): "
                         "master2: no answer; after fixing it run kubeha resume o ``")
    assert cases[0].file_name == "network-cut--master2-cut-mid-restart.json"


def test_the_docs_show_what_the_lab_recorded():
    table = fault_table(read_records())
    if os.environ.get("KUBEHA_WRITE_DOCS") == "1":
        RELIABILITY_MD.write_text(docs_with_table(RELIABILITY_MD.read_text(), table))
    assert START + table + END in RELIABILITY_MD.read_text(), (
        "docs/reliability.md is out of date: KUBEHA_WRITE_DOCS=1 pytest tests/unit/test_fault_table.py writes it")
