"""issue 8's crash sweep: `kubeha apply` of migrate-masters and of change-endpoint SIGKILLed
at every crash point (once each step finished, and in the middle of each step that changes
a host), one run per point, forward and back; `kubeha resume` finishes each, and the
cluster then is as an uninterrupted run leaves it: etcd members and every apiserver's
--etcd-servers, the load balancers, who holds each VIP, every host's LB configs, kubeconfig
servers, apiserver cert SANs, manifests and units, running services, and the inventory
(tests/helpers/crash_points.py).

A minute or two a point on kubeadm; too long for the default run, which kills one
migrate-masters in the middle of its VIP hand-off, one way (below, not under the marker).
The sweep:

    scripts/test.sh -m crash_sweep tests/lab/test_operation_resume.py   # -k kubeadm: one layout

KUBEHA_SWEEP_POINTS=START:STOP sweeps only those points (to continue a sweep). Each case
writes a record under tests/lab/results/crash/; the docs' table is rewritten from them.
"""

from __future__ import annotations

import pytest
from helpers.crash_points import (
    RESULTS, chosen, crash_points, killed_and_resumed, run_whole, write_docs,
)
from helpers.fault_table import write_record
from helpers.operations import make_plan
from test_migrate_masters import lab  # noqa: F401 (lab: a lab of this test's own)

from kubeha.inventory import load_inventory
from kubeha.model import Cluster, Layout

pytestmark = pytest.mark.lab


def directions(operation: str, cluster: Cluster) -> dict[str, dict[str, str]]:
    """The operation's arguments there and back again."""
    if operation == "migrate-masters":
        return {"forward": {"replace": "master1=spare1"}, "back": {"replace": "spare1=master1"}}
    # each way with its own VRRP id: left to choose, a VIP takes the next id free, another each time
    vip = cluster.vip
    return {"forward": {"vip": str(vip.address + 50), "vrid": str(vip.vrid % 255 + 1), "retire_san": "true"},
            "back": {"vip": str(vip.address), "vrid": str(vip.vrid), "retire_san": "true"}}


def sweep(lab, inventory_path, tmp_path, operation: str, indexes, killed=("forward", "back")) -> list:  # noqa: F811
    """Uninterrupted runs there and back (the ends to reach, each step's duration), then each
    chosen point killed there and back (or only the ``killed`` ways); the cases, recorded."""
    ways = directions(operation, load_inventory(inventory_path).cluster)
    ends, seconds = {}, {}
    for way, arguments in ways.items():
        ends[way], seconds[way] = run_whole(lab, inventory_path, tmp_path / f"whole-{way}", operation, arguments)
    cases = []
    for i in indexes(len(crash_points(make_plan(inventory_path, operation, ways["forward"])))):
        for way, arguments in ((w, a) for w, a in ways.items() if w in killed):
            case = killed_and_resumed(lab, inventory_path, tmp_path / f"{i}-{way}", operation, arguments, way, i,
                                      seconds[way], ends[way])
            write_record(case, RESULTS)
            cases.append(case)
            if not case.passed:  # the cluster is not where the next case starts from
                write_docs()
                return cases
    write_docs()
    return cases


@pytest.mark.crash_sweep
@pytest.mark.parametrize("operation", ["migrate-masters", "change-endpoint"])
def test_every_killed_operation_resumes_to_the_same_cluster(lab, inventory_path, tmp_path, operation):  # noqa: F811
    cases = sweep(lab, inventory_path, tmp_path, operation, lambda count: chosen(list(range(count))))
    print(f"crash sweep ({operation}): tried {len(cases)}, passed {sum(c.passed for c in cases)}")
    assert [c for c in cases if not c.passed] == []


@pytest.mark.layouts(Layout.KUBEADM)
def test_a_migration_killed_in_the_vip_handoff_resumes_to_the_same_cluster(lab, inventory_path, tmp_path):  # noqa: F811
    """The default run's sample: killed in the middle of handing the VIP off the old master
    (one way only: CI time)."""
    plan = make_plan(inventory_path, "migrate-masters", directions("migrate-masters", None)["forward"])
    handoff = [str(p) for p in crash_points(plan)].index("during remove-lb-server-master1")
    cases = sweep(lab, inventory_path, tmp_path, "migrate-masters", lambda count: [handoff], killed=("forward",))
    assert [c for c in cases if not c.passed] == [] and len(cases) == 1
