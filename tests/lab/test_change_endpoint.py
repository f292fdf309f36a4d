"""`kubeha change-endpoint` on a lab of its own per test (the endpoint moves for good): the
VIP moved to a new address with the probe following the inventory, masters whose kubelets
cannot reach the new VIP stopping the run with the first one put back, a resume finishing it;
then nothing on any host and no ConfigMap names the old VIP, and `kubeha check` passes."""

from __future__ import annotations

import time

import pytest
from helpers.operations import (
    assert_no_outage, assert_nodes_untouched_and_check_passes, make_plan, run_plan, workloads,
)
from test_migrate_masters import files_naming, lab  # noqa: F401 (lab: a lab of this test's own)

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.lb.apply import vip_holding
from kubeha.model import Layout
from kubeha.operations import operation
from kubeha.pki import sans_of
from kubeha.plan import Journal, StepOutcome

pytestmark = pytest.mark.lab


@pytest.mark.extended_on(Layout.KUBEASZ)  # CI time; kubeasz's nodes use their node-local proxies, not the VIP
def test_the_endpoint_moves_to_a_new_vip_without_a_failed_request(lab, inventory_path, tmp_path):  # noqa: F811
    cluster = load_inventory(inventory_path).cluster
    old = cluster.vip
    new_address = old.address + 50
    assert new_address not in {h.address for h in cluster.hosts}
    before = workloads(inventory_path)
    # a node that cannot renew its Lease is put back within 10 s: before the Node goes NotReady (40 s)
    plan = make_plan(inventory_path, "change-endpoint", {"vip": str(new_address), "retire_san": "true",
                                                         "node_timeout": "10"})
    ids = [s.id for s in plan.steps]
    repoints = [s for s in plan.steps if s.kind == "node-kubeconfig-server"]
    # kubeadm's masters' kubelets name the VIP; kubeasz's nodes go through their node-local nginx
    assert bool(repoints) is (cluster.layout is Layout.KUBEADM), ids
    journal = tmp_path / "endpoint.sqlite"
    started = time.monotonic()
    blocked = bool(repoints)
    if blocked:
        # a route that drops the new VIP on every master (but on the one holding it, where it is
        # a local address): the first other master's kubelet cannot renew its Lease through it
        masters = [m.name for m in cluster.masters]
        for master in masters:
            lab.on(master, ["ip", "route", "add", "blackhole", f"{new_address}/32"])
        try:
            run = run_plan(plan, inventory_path, journal, raises=False)
        finally:
            for master in masters:
                lab.on(master, ["ip", "route", "del", "blackhole", f"{new_address}/32"], check=False)
        assert run.error is not None, "the run went through every blocked master"
        assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
        with Journal(journal) as records:
            outcomes = {r.step_id: r.outcome for r in records.steps(plan.operation_id)}
        failed = [step for step, outcome in outcomes.items() if outcome is not StepOutcome.DONE]
        assert len(failed) == 1 and failed[0].startswith("repoint-master-"), outcomes
        assert outcomes[failed[0]] is StepOutcome.ROLLED_BACK and failed[0].removeprefix("repoint-master-") in \
            str(run.error), (outcomes, run.error)
    run = run_plan(plan, inventory_path, journal, resume=blocked)
    print(f"change-endpoint: {time.monotonic() - started:.0f} s for {len(plan.steps)} steps")
    assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)

    after = load_inventory(inventory_path).cluster
    assert after.vip.address == new_address and after.vip.port == old.port and after.extra_vips == ()
    with ClusterAccess(load_inventory(inventory_path)) as access:
        assert [h for h, held in vip_holding(access, old).items() if held.value] == []
        assert len([h for h, held in vip_holding(access, after.vip).items() if held.value]) == 1
        left = operation("change-endpoint").left_to_do(access, plan, load_inventory(inventory_path))
    assert left == ([] if cluster.layout is Layout.KUBEADM else [
        f"kubeasz's hosts file on the machine ezctl runs on (/etc/kubeasz/clusters/{cluster.name}/hosts): "
        f"set the ex_lb VIP to {new_address}"]), left
    # nothing on any host names the old VIP, and no apiserver cert (--retire-san)
    assert files_naming(lab, after, [str(old.address)]) == {}
    for master in after.masters:
        sans = sans_of(lab.on(master.name, ["cat", str(after.paths.apiserver.cert)]).stdout.encode())
        assert sans.covers(str(new_address)) and not sans.covers(str(old.address)), (master.name, sans)
    assert_nodes_untouched_and_check_passes(before, inventory_path)
