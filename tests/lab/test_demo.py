"""The README's main command, `kubeha demo`, run non-interactively on a lab of its own:
it moves every master to a spare and the API to a new VIP with zero failed requests through
the VIP and every path after the one retry, no lost etcd write, and leaves a report for each."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
from helpers.lab import require_lab_prerequisites

DEMO_LAB_ID = "6"  # beside the shared lab of the other tests, never instead of it


@pytest.mark.extended  # ~6 min (CI time): `scripts/test.sh -m extended tests/lab/test_demo.py`
def test_the_demo_runs_end_to_end_without_a_failed_request(tmp_path):
    require_lab_prerequisites()
    env = {**os.environ, "KUBEHA_LAB_ID": DEMO_LAB_ID, "COLUMNS": "160"}
    try:
        demo = subprocess.run([sys.executable, "-m", "kubeha.cli", "demo", "--state-dir", str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([sys.executable, "-m", "kubeha.cli", "lab", "down"], env=env, capture_output=True, check=False)
    print(demo.stdout[-20000:], demo.stderr[-5000:])
    assert demo.returncode == 0, demo.stderr[-2000:]
    summary = demo.stdout[demo.stdout.index("summary ("):]
    for operation in ("migrate-masters", "change-endpoint"):
        line = next(line for line in summary.splitlines() if line.startswith(f"{operation}:"))
        assert re.search(r"\(0 after a retry\)", line) and line.endswith("etcd writes lost: 0"), line
    reports = sorted((tmp_path / "reports").glob("*.html"))
    assert len(reports) == 2 and all("<svg" in r.read_text() for r in reports), reports
    assert "lab removed" in demo.stdout
    # no key or token in what it printed or left: journal, plans, probe timelines, reports
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    for text in [demo.stdout, demo.stderr, *(p.read_bytes().decode(errors="replace") for p in left)]:
        assert "PRIVATE KEY" not in text and "client-key-data" not in text and "token:" not in text
    private = [*reports, *(tmp_path / "probes").rglob("*.jsonl")]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in private) and stat.S_IMODE(
        (tmp_path / "journal.sqlite").stat().st_mode) == 0o600
