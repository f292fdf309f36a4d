"""`kubeha migrate-masters` on a lab of its own per test (it leaves the cluster on other
machines): masters replaced by spares with the probe running, a new apiserver that never
serves stopping the run and a resume finishing it, then no file on any host and no ConfigMap
still names an old master. The default run moves one master (the VIP holder); the extended
run moves all three."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import pytest
from helpers.lab import require_lab_prerequisites
from helpers.operations import (
    assert_audit_finds_no_divergence, assert_no_outage, assert_nodes_untouched_and_check_passes, make_plan, run_plan, workloads,
)
from helpers.wait import wait_for
from test_masters import all_done, master_state

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.kube import node_ready
from kubeha.lab import Lab, LabSpec
from kubeha.model import Cluster, Layout, Role
from kubeha.operations import operation
from kubeha.pki import sans_of
from kubeha.plan import Journal, StepOutcome

pytestmark = pytest.mark.lab

ONE = {"master1": "spare1"}
ALL = {"master1": "spare1", "master2": "spare2", "master3": "spare3"}


@pytest.fixture(params=[Layout.KUBEADM, Layout.KUBEASZ], ids=lambda l: l.value)
def lab(request):
    """A lab for this test only: the migration moves its control plane for good."""
    require_lab_prerequisites()
    lab = Lab(log=print)
    try:
        lab.up(LabSpec(layout=request.param))
        yield lab
    finally:
        lab.down()
        assert not lab.leftovers()


def config_dirs(cluster: Cluster) -> list[str]:
    """Where the cluster's components read their configuration on a host."""
    p = cluster.paths
    files = [p.pki_dir, p.etcd_pki_dir, p.admin_kubeconfig, p.kubelet_kubeconfig, p.controller_manager_kubeconfig,
             p.scheduler_kubeconfig, p.kube_proxy_kubeconfig, p.haproxy_cfg, p.keepalived_conf, p.node_proxy_conf]
    dirs = {str(path.parent) for path in files} | {"/etc/systemd/system", "/var/lib/kubelet", "/etc/calico"}
    if p.manifests_dir is not None:
        dirs.add(str(p.manifests_dir))
    return sorted(dirs)


def files_naming(lab, cluster: Cluster, addresses: list[str]) -> dict[str, list[str]]:
    """host -> the files under the config dirs that name one of ``addresses`` as a whole word."""
    patterns = " ".join(f"-e {shlex.quote(a)}" for a in addresses)
    dirs = " ".join(shlex.quote(d) for d in config_dirs(cluster))
    found = {}
    for host in cluster.hosts:
        out = lab.on(host.name, ["sh", "-c", f"grep -rlwF {patterns} {dirs} 2>/dev/null; true"]).stdout.split()
        if out:
            found[host.name] = out
    return found


@pytest.mark.extended_on(Layout.KUBEASZ)  # CI time: every kubeasz apiserver is repointed at each part
def test_the_vip_holder_moves_to_a_spare_without_a_failed_request(lab, inventory_path, tmp_path, monkeypatch):
    vip = str(load_inventory(inventory_path).cluster.vip.address)
    assert f"inet {vip}/" in lab.on("master1", ["ip", "-4", "addr", "show"]).stdout  # handed over on the way
    migrate_stopped_once_and_resumed(lab, inventory_path, tmp_path, monkeypatch, ONE)


@pytest.mark.extended  # ~22 min on kubeadm, ~25 on kubeasz
def test_the_masters_move_to_the_spares_without_a_failed_request(lab, inventory_path, tmp_path, monkeypatch):
    migrate_stopped_once_and_resumed(lab, inventory_path, tmp_path, monkeypatch, ALL)


def shown_the_model_of_every_step(inventory_path, tmp_path, replace: str, old_address: str) -> None:
    """`kubeha plan migrate-masters --verify` on the live cluster prints the simulator's model
    after every step: etcd, the LBs, the VIP's holder, clients naming what goes away."""
    shown = subprocess.run([sys.executable, "-m", "kubeha.cli", "plan", "migrate-masters", "--replace", replace,
                            "--verify", "-i", str(inventory_path), "--journal", str(tmp_path / "verify.sqlite")],
                           capture_output=True, text=True, timeout=180)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    print(shown.stdout)
    lines = shown.stdout.split("simulated, step by step")[1].splitlines()[1:]
    steps = [line for line in lines if line.startswith("  ") and not line.startswith("    ")]  # not warnings
    assert "refused:" not in shown.stdout and len(steps) >= 20, shown.stdout
    assert all("voters " in line and "apiservers in the LBs:" in line and "; VIP " in line for line in steps), steps
    # clients naming the old master (the worker, its control plane) are said until they move
    assert old_address in steps[0].partition("named but served no more after a later step:")[2], steps[0]
    new = sorted(pair.split("=")[1] for pair in replace.split(","))
    assert all(name in steps[-1].split("apiservers in the LBs:")[1] for name in new), steps[-1]


def migrate_stopped_once_and_resumed(lab, inventory_path, tmp_path, monkeypatch, pairs: dict[str, str]) -> None:
    cluster = load_inventory(inventory_path).cluster
    old_addresses = [str(cluster.host(old).address) for old in pairs]
    # a worker whose kubelet names a master directly (as runbook 001's clusters have them)
    worker = cluster.workers[0]
    kubeconfig = cluster.paths.kubelet_kubeconfig
    lab.on(worker.name, ["sh", "-c", f"sed -i 's#server: .*#server: https://{old_addresses[0]}:6443#' {kubeconfig} && "
                                     "systemctl restart kubelet"])
    with ClusterAccess(load_inventory(inventory_path)) as access:
        wait_for(lambda: node_ready(access.kube(), worker.kube_node_name), 60, f"{worker.name} Ready")
    before = workloads(inventory_path)
    replace = ",".join(f"{o}={n}" for o, n in pairs.items())
    shown_the_model_of_every_step(inventory_path, tmp_path, replace, old_addresses[0])
    plan = make_plan(inventory_path, "migrate-masters", {"replace": replace})
    # it is pointed at the VIP before any master goes
    repoint = next(s for s in plan.steps if s.kind == "node-kubeconfig-server")
    assert repoint.hosts == (worker.name,) and repoint.arguments["server"] == cluster.endpoint
    assert plan.steps.index(repoint) < min(i for i, s in enumerate(plan.steps) if s.kind == "lb-rotation"
                                           and not s.arguments["into"])
    journal = tmp_path / "migrate.sqlite"
    # the last new master's apiserver never serves (a binary of the wrong build): the run
    # stops there with that step rolled back and the API served; fixed, the run resumes
    broken = [s.arguments["host"] for s in plan.steps if s.kind == "master-files"][-1]
    lab.on(broken, ["sh", "-c", "printf '#!/bin/sh\\nexec sleep 900\\n' > /run/never-ready && "
                                "chmod +x /run/never-ready && mount --bind /run/never-ready /usr/local/bin/kube-apiserver"])
    monkeypatch.setattr("kubeha.operations.masters.READY_TIMEOUT", 20.0)
    started = time.monotonic()
    try:
        run = run_plan(plan, inventory_path, journal, raises=False)
    finally:
        lab.on(broken, ["sh", "-c", "umount /usr/local/bin/kube-apiserver; rm -f /run/never-ready"], check=False)
        monkeypatch.undo()
    assert run.error is not None and "kube-apiserver" in str(run.error), run.error
    assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
    with Journal(journal) as records:
        outcomes = {r.step_id: r.outcome for r in records.steps(plan.operation_id)}
    assert outcomes[f"start-kube-apiserver-{broken}"] is StepOutcome.ROLLED_BACK, outcomes

    run = run_plan(plan, inventory_path, journal, resume=True)
    print(f"migrate-masters: {time.monotonic() - started:.0f} s for {len(plan.steps)} steps, one stop and a resume")
    assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
    all_done(journal, plan)
    assert_audit_finds_no_divergence(plan.operation_id, inventory_path, journal)

    after = load_inventory(inventory_path).cluster
    def moved(hosts) -> set[str]:
        return {h.name for h in hosts} - set(pairs) | set(pairs.values())
    assert {h.name for h in after.masters} == moved(cluster.masters)
    assert {h.name for h in after.etcd_members} == (moved(cluster.etcd_members) if cluster.etcd_topology.value == "stacked"
                                                    else {h.name for h in cluster.etcd_members})
    assert not any(after.host(old).has(Role.MASTER) or after.host(old).has(Role.ETCD) for old in pairs)
    for new in pairs.values():
        state = master_state(inventory_path, new)
        assert state["member"] and state["in_lbs"] and all(state["processes"].values()), (new, state)
    for old in pairs:
        state = master_state(inventory_path, old)
        assert not state["member"] and state["node"] is None and not any(state["processes"].values()), (old, state)
    # nothing is left pointing at an old master
    assert files_naming(lab, after, old_addresses) == {}
    # no ConfigMap either; what kubeha leaves alone but reports: the lab's hand-made
    # monitoring targets for etcd
    inventory = load_inventory(inventory_path)
    with ClusterAccess(inventory) as access:
        left = operation("migrate-masters").left_to_do(access, plan, inventory)
    assert left == [f"Endpoints kube-system/monitoring-kube-etcd names {', '.join(old_addresses)}: an old master; "
                    "update or delete it"], left
    for new in pairs.values():  # nor a new apiserver's cert
        pem = lab.on(new, ["cat", str(after.paths.apiserver.cert)]).stdout.encode()
        sans = sans_of(pem)
        assert not {str(a) for a in sans.ip_addresses} & set(old_addresses), (new, sans)
        assert not set(sans.dns_names) & set(pairs), (new, sans)
    assert_nodes_untouched_and_check_passes(before, inventory_path)
