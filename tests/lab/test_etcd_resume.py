"""`kubeha` SIGKILLed at a step boundary of an etcd migration; `kubeha resume` finishes it and
the cluster ends as an uninterrupted run leaves it.

The default run kills one forward and one backward migration per layout, each at the
first boundary after a step of a different kind (start, remove, repoint, promote). The full sweep (every boundary of both directions, both
layouts) is one command, documented in docs/reliability.md:

    KUBEHA_CRASH_SWEEP=all scripts/test.sh tests/lab/test_etcd_resume.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.operations import expected_fingerprint, fingerprint, make_plan

from kubeha.model import Layout
from kubeha.plan import Journal, StepOutcome

pytestmark = pytest.mark.lab

FORWARD = "master1=spare1,master2=spare2,master3=spare3"
BACK = "spare1=master1,spare2=master2,spare3=master3"
SWEEP = os.environ.get("KUBEHA_CRASH_SWEEP") == "all"
CLI = [sys.executable, "-m", "kubeha.cli"]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _finished(journal_path: Path, operation_id: str, step_id: str) -> bool:
    if not journal_path.exists():
        return False
    with Journal(journal_path) as journal:
        return any(r.step_id == step_id and r.outcome in (StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE)
                   for r in journal.steps(operation_id))


def apply_killed_at(plan_file: Path, operation_id: str, boundary: str, inventory: Path, journal: Path) -> bool:
    """`kubeha apply` SIGKILLed as soon as the journal shows ``boundary`` finished; False if
    the run ended first."""
    process = subprocess.Popen([*CLI, "apply", str(plan_file), "--yes", "--no-probe", "-i", str(inventory),
                                "--journal", str(journal)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while process.poll() is None:
            if _finished(journal, operation_id, boundary):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def migrate_killed_and_resumed(lab, inventory: Path, tmp_path: Path, replace: str, boundary: str, expected_from: dict) -> dict:
    hosts = [h.name for h in lab.topology().hosts]
    tmp_path.mkdir()
    plan = make_plan(inventory, "etcd-migrate", {"replace": replace})
    plan_file = tmp_path / f"{plan.operation_id}.json"
    plan_file.write_text(plan.to_json())
    journal = tmp_path / "journal.sqlite"
    assert boundary in [s.id for s in plan.steps], [s.id for s in plan.steps]
    assert apply_killed_at(plan_file, plan.operation_id, boundary, inventory, journal), f"the run ended before {boundary}"
    resumed = _cli("resume", plan.operation_id, "--yes", "--no-probe", "-i", str(inventory), "--journal", str(journal))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = fingerprint(inventory, hosts)
    assert after == expected_fingerprint(plan, expected_from), (boundary, after)
    return after


# the default sample, by step kind: forward and back, per layout (4 kinds in all)
SAMPLE = {Layout.KUBEADM: ("etcd-start-member", "etcd-remove-member"),
          Layout.KUBEASZ: ("apiserver-etcd-servers", "etcd-promote-member")}


def _points(inventory: Path, replace: str, kind: str | None) -> list[str]:
    """Every boundary of that migration's plan (but the last), or the first of a kind."""
    steps = make_plan(inventory, "etcd-migrate", {"replace": replace}).steps[:-1]
    return [s.id for s in steps if kind is None or s.kind == kind][: None if kind is None else 1]


def test_a_killed_migration_resumes_to_the_same_cluster(lab, tmp_path):
    layout = lab.topology().cluster.layout
    inventory = tmp_path / "cluster.yaml"
    shutil.copy(lab.paths.inventory, inventory)
    hosts = [h.name for h in lab.topology().hosts]
    forward_kind, back_kind = (None, None) if SWEEP else SAMPLE[layout]
    forward_points = _points(inventory, FORWARD, forward_kind)
    state = fingerprint(inventory, hosts)
    tried = passed = 0
    for i, point in enumerate(forward_points):
        tried += 1
        moved = migrate_killed_and_resumed(lab, inventory, tmp_path / f"f{i}", FORWARD, point, state)
        passed += 1
        back_points = _points(inventory, BACK, back_kind)
        tried += 1
        state = migrate_killed_and_resumed(lab, inventory, tmp_path / f"b{i}", BACK, back_points[i % len(back_points)],
                                           moved)
        passed += 1
    print(f"crash points ({layout.value}): tried {tried}, passed {passed}")
