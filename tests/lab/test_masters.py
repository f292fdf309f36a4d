"""`kubeha add-master` and `kubeha remove-master` on the shared lab, with the probe running:
a spare becomes a master (its etcd member, apiserver, controller-manager, scheduler, kubelet
and Node) and leaves again, and the lab is as it was."""

from __future__ import annotations

import pytest
from helpers.operations import (
    assert_no_outage, assert_nodes_untouched_and_check_passes, kubeha_check, make_plan, rollback_cli, run_plan, workloads,
)

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.kube import read_node
from kubeha.lb import backend_states
from kubeha.model import Layout
from kubeha.operations import components
from kubeha.operations.etcd_view import read_etcd_state
from kubeha.plan import Journal, StepOutcome

pytestmark = pytest.mark.lab

NEW = "spare1"


def master_state(inventory_path, name: str) -> dict:
    """What makes ``name`` a master, as the cluster shows it."""
    inventory = load_inventory(inventory_path)
    with ClusterAccess(inventory) as access:
        cluster = access.cluster
        host = cluster.host(name)
        state = read_etcd_state(access.etcd())
        node = read_node(access.kube(), host.kube_node_name)
        return {
            "member": any(m.name == name and not m.is_learner for m in state.members),
            "in_lbs": name in {h.name for h in cluster.masters} and backend_states(access, cluster).in_everywhere(name),
            "processes": {c: components.process(access, cluster, host, c).pid is not None
                          for c in components.RESTARTABLE},
            "node": None if node is None else sorted((node["metadata"].get("labels") or {})),
            "taints": None if node is None else (node.get("spec") or {}).get("taints"),
        }


def repair(inventory_path, tmp_path, add) -> None:
    """The lab is shared: a failed test leaves it as it found it (an add that did not finish
    rolled back, a master added removed)."""
    if NEW in {h.name for h in load_inventory(inventory_path).cluster.masters}:
        run_plan(make_plan(inventory_path, "remove-master", {"host": NEW}), inventory_path,
                 tmp_path / "repair.sqlite", probe=False)
    elif add is not None:
        rollback_cli(add.operation_id, inventory_path, tmp_path / "add.sqlite")


def all_done(journal_path, plan) -> None:
    with Journal(journal_path) as journal:
        outcomes = {r.step_id: r.outcome for r in journal.steps(plan.operation_id)}
    # a leadership move off a member that does not lead is done before it starts
    assert set(outcomes.values()) <= {StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE}, outcomes
    assert len(outcomes) == len(plan.steps), outcomes


# the default run's migrate-masters test adds and removes three masters on kubeadm; this one
# (7.5 min on kubeasz, every apiserver repointed twice) is in the extended run (CI time)
@pytest.mark.extended_on(Layout.KUBEADM, Layout.KUBEASZ)
def test_a_spare_becomes_a_master_and_leaves_again_without_a_failed_request(lab, inventory_path, tmp_path):
    original, before = inventory_path.read_text(), workloads(inventory_path)
    source = master_state(inventory_path, "master1")
    add = None
    try:
        add = make_plan(inventory_path, "add-master", {"host": NEW})
        run = run_plan(add, inventory_path, tmp_path / "add.sqlite")
        assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
        all_done(tmp_path / "add.sqlite", add)
        added = master_state(inventory_path, NEW)
        assert added["member"] and added["in_lbs"] and all(added["processes"].values()), added
        # its Node is marked as the source's: the same role labels and taints
        assert {k for k in added["node"] if k.startswith("node-role")} == {
            k for k in source["node"] if k.startswith("node-role")}
        assert added["taints"] == source["taints"]
        check = kubeha_check(inventory_path)
        assert check.returncode == 0, check.stdout + check.stderr

        remove = make_plan(inventory_path, "remove-master", {"host": NEW})
        run = run_plan(remove, inventory_path, tmp_path / "remove.sqlite")
        assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
        all_done(tmp_path / "remove.sqlite", remove)
    finally:
        repair(inventory_path, tmp_path, add)
    removed = master_state(inventory_path, NEW)
    assert not removed["member"] and removed["node"] is None and not any(removed["processes"].values()), removed
    assert inventory_path.read_text() == original
    assert_nodes_untouched_and_check_passes(before, inventory_path)


@pytest.mark.layouts(Layout.KUBEADM)  # on one layout (CI time); it passed on kubeasz too
@pytest.mark.extended  # CI time: the default run's migrate-masters rolls the same step back, then resumes
def test_a_new_apiserver_that_never_becomes_ready_is_rolled_back(lab, inventory_path, tmp_path, monkeypatch):
    # on the new master, kube-apiserver is a program that never serves (as a binary of the
    # wrong build would): bound over the real one in that host's own mount namespace only
    lab.on(NEW, ["sh", "-c", "printf '#!/bin/sh\\nexec sleep 900\\n' > /run/never-ready && chmod +x /run/never-ready && "
                             "mount --bind /run/never-ready /usr/local/bin/kube-apiserver"])
    monkeypatch.setattr("kubeha.operations.masters.READY_TIMEOUT", 20.0)
    original = inventory_path.read_text()
    try:
        add = make_plan(inventory_path, "add-master", {"host": NEW})
        run = run_plan(add, inventory_path, tmp_path / "add.sqlite", raises=False)
        assert run.error is not None and "kube-apiserver" in str(run.error), run.error
        assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
        with Journal(tmp_path / "add.sqlite") as journal:
            outcomes = {r.step_id: r.outcome for r in journal.steps(add.operation_id)}
        assert outcomes[f"start-kube-apiserver-{NEW}"] is StepOutcome.ROLLED_BACK, outcomes
        assert inventory_path.read_text() == original
    finally:
        lab.on(NEW, ["sh", "-c", "umount /usr/local/bin/kube-apiserver; rm -f /run/never-ready"], check=False)
    # the rest of the operation is taken back: etcd member, Node, load balancers, files
    rolled = rollback_cli(add.operation_id, inventory_path, tmp_path / "add.sqlite")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    gone = master_state(inventory_path, NEW)
    assert not gone["member"] and gone["node"] is None and not any(gone["processes"].values()), gone
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr
