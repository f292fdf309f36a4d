"""The full crash sweep: `kubeha` SIGKILLed at every step boundary of the 3-member etcd
migration, forward and back, one run per boundary; `kubeha resume` finishes each and the
cluster ends as an uninterrupted run leaves it.

Too long for the default run (about 50 s a boundary, 50 boundaries a layout); the default run kills one
migration per layout (tests/lab/test_etcd_migrate.py). Run the sweep with

    scripts/test.sh -m crash_sweep tests/lab/test_etcd_resume.py

and record its result in docs/reliability.md. KUBEHA_SWEEP_BOUNDARIES=START:STOP sweeps only
those forward boundaries (and the matching ones back), to continue a sweep or to split it
over labs run side by side (each with its own KUBEHA_LAB_ID).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.crash_points import chosen
from helpers.operations import fingerprint, make_plan, migrate_killed_and_resumed

pytestmark = [pytest.mark.lab, pytest.mark.crash_sweep]

FORWARD = "master1=spare1,master2=spare2,master3=spare3"
BACK = "spare1=master1,spare2=master2,spare3=master3"


def _boundaries(inventory: Path, replace: str) -> list[str]:
    """Every step boundary of the migration's plan but the last (after it nothing is left)."""
    return [s.id for s in make_plan(inventory, "etcd-migrate", {"replace": replace}).steps[:-1]]


def test_every_killed_migration_resumes_to_the_same_cluster(lab, tmp_path):
    inventory = tmp_path / "cluster.yaml"
    shutil.copy(lab.paths.inventory, inventory)
    hosts = [h.name for h in lab.topology().hosts]
    state = fingerprint(inventory, hosts)
    tried = passed = 0
    failures = []
    count = len(_boundaries(inventory, FORWARD))
    for i in chosen(list(range(count)), "KUBEHA_SWEEP_BOUNDARIES"):
        for replace in (FORWARD, BACK):
            # planned anew each time: the order depends on which member leads etcd now
            boundaries = _boundaries(inventory, replace)
            where = boundaries[i % len(boundaries)]
            tried += 1
            try:
                state = migrate_killed_and_resumed(lab, inventory, tmp_path / f"{tried}", replace, where, state)
                passed += 1
            except AssertionError as e:
                failures.append(f"{where}: {e}")
                raise
            finally:
                print(f"crash sweep ({lab.topology().cluster.layout.value}): tried {tried}, passed {passed}",
                      flush=True)
    assert failures == []
