"""`kubeha rolling-restart` on the shared lab, with the availability probe running."""

from __future__ import annotations

import pytest
from helpers.operations import (
    assert_no_outage, assert_nodes_untouched_and_check_passes, kubeha_check, make_plan, resume_cli, rollback_cli,
    run_plan, workloads,
)

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.lb import backend_states, node_proxy_hosts
from kubeha.model import Layout
from kubeha.operations import components
from kubeha.operations.etcd_plan import live_member
from kubeha.operations.etcd_view import read_etcd_state
from kubeha.plan import Journal, StepOutcome

pytestmark = pytest.mark.lab

EVERY_COMPONENT = "etcd,kube-apiserver,kube-controller-manager,kube-scheduler"


def processes(inventory_path) -> dict[tuple[str, str], int | None]:
    """The pid of every restartable component on every master."""
    with ClusterAccess(load_inventory(inventory_path)) as access:
        cluster = access.cluster
        return {(h.name, c): components.process(access, cluster, h, c).pid
                for h in cluster.masters for c in components.RESTARTABLE}


def nginx_confs(lab, inventory_path) -> dict[str, bytes]:
    cluster = load_inventory(inventory_path).cluster
    return {h.name: lab.paths.on_host(h.name, cluster.paths.node_proxy_conf).read_bytes()
            for h in node_proxy_hosts(cluster)}


def follower_and_leader(inventory_path) -> str:
    """A master whose etcd member follows, then the one whose member leads (the leader's
    restart moves leadership first): two masters show the order at two thirds of the time."""
    with ClusterAccess(load_inventory(inventory_path)) as access:
        cluster = access.cluster
        state = read_etcd_state(access.etcd())
        leads = {h.name: (m := live_member(state.members, cluster, h)) is not None and m.id == state.leader_id
                 for h in cluster.masters}
    return f"{next(h for h, lead in leads.items() if not lead)},{next(h for h, lead in leads.items() if lead)}"


@pytest.mark.extended_on(Layout.KUBEASZ)  # CI time: kubeasz's own restart path is in the test below
def test_every_component_restarts_master_by_master_without_a_failed_request(lab, inventory_path, tmp_path):
    before, pids, confs = workloads(inventory_path), processes(inventory_path), nginx_confs(lab, inventory_path)
    hosts = follower_and_leader(inventory_path)
    plan = make_plan(inventory_path, "rolling-restart", {"component": EVERY_COMPONENT, "host": hosts})
    assert [s.id for s in plan.steps if s.kind == "etcd-move-leader"] == [f"move-leader-off-{hosts.split(',')[1]}"]
    run = run_plan(plan, inventory_path, tmp_path / "journal.sqlite")
    assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
    with Journal(tmp_path / "journal.sqlite") as journal:
        outcomes = {r.step_id: r.outcome for r in journal.steps(plan.operation_id)}
    assert set(outcomes.values()) == {StepOutcome.DONE} and len(outcomes) == len(plan.steps), outcomes
    assert nginx_confs(lab, inventory_path) == confs  # every apiserver put back as it was, byte for byte
    restarted = processes(inventory_path)
    chosen = hosts.split(",")
    assert all(restarted[key] not in (None, pid) for key, pid in pids.items() if key[0] in chosen), (pids, restarted)
    assert all(restarted[key] == pid for key, pid in pids.items() if key[0] not in chosen), (pids, restarted)
    assert_nodes_untouched_and_check_passes(before, inventory_path)


@pytest.mark.layouts(Layout.KUBEASZ)  # the restart itself is shown on both layouts; this, on one (CI time)
def test_an_apiserver_that_does_not_come_back_stays_out_and_resume_finishes(lab, inventory_path, tmp_path):
    # master2's apiserver serving key replaced by one that is not a key: the running process
    # has the real one loaded; the restarted one cannot serve, as after a botched cert renewal
    key = str(load_inventory(inventory_path).cluster.paths.apiserver.key)
    original = lab.on("master2", ["cat", key]).stdout
    lab.on("master2", ["sh", "-c", f"cp {key} {key}.good && echo broken > {key}"])
    try:
        plan = make_plan(inventory_path, "rolling-restart",
                         {"component": "kube-apiserver", "host": "master2", "timeout": "30"})
        journal = tmp_path / "journal.sqlite"
        run = run_plan(plan, inventory_path, journal, raises=False)
        print(run.error)
        assert run.error is not None and "master2" in str(run.error)
        assert "stays out of every load balancer" in str(run.error) and "kubeha resume" in str(run.error)
        assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
        with ClusterAccess(load_inventory(inventory_path)) as access:
            assert backend_states(access, access.cluster).out_everywhere("master2")
    finally:
        lab.on("master2", ["sh", "-c", f"mv {key}.good {key}"])
    assert lab.on("master2", ["cat", key]).stdout == original
    resumed = resume_cli(plan.operation_id, inventory_path, journal)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr


def etcd_flags(inventory_path, *names: str) -> dict[str, dict[str, str | None]]:
    """Those flags of each running etcd member, as its command line has them."""
    with ClusterAccess(load_inventory(inventory_path)) as access:
        cluster = access.cluster
        running = {h.name: components.process(access, cluster, h, components.ETCD).flags or {}
                   for h in cluster.etcd_members}
    return {host: {name: flags.get(name) for name in names} for host, flags in running.items()}


def test_etcd_flags_set_member_by_member_without_a_failed_request_and_rolled_back(lab, inventory_path, tmp_path):
    timings = ("heartbeat-interval", "election-timeout")
    cluster = load_inventory(inventory_path).cluster
    files = {h.name: lab.paths.on_host(h.name, components.file_of(cluster, h, components.ETCD))
             for h in cluster.etcd_members}
    originals = {name: path.read_bytes() for name, path in files.items()}
    # longer than etcd's defaults: a shared, loaded test machine must not see spurious elections
    plan = make_plan(inventory_path, "rolling-restart",
                     {"component": "etcd", "set": "heartbeat-interval=100,election-timeout=1500"})
    journal = tmp_path / "journal.sqlite"
    run = run_plan(plan, inventory_path, journal)
    assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
    assert etcd_flags(inventory_path, *timings) == {name: {"heartbeat-interval": "100", "election-timeout": "1500"}
                                                     for name in files}
    # `kubeha rollback` takes the flags back, member by member: the shared lab goes on as it was
    rolled = rollback_cli(plan.operation_id, inventory_path, journal)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert {name: path.read_bytes() for name, path in files.items()} == originals
    assert etcd_flags(inventory_path, *timings) == {name: dict.fromkeys(timings) for name in files}
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.layouts(Layout.KUBEADM)  # a static pod's manifest put back; a unit's takes the same step
def test_a_flag_etcd_rejects_is_taken_back_and_the_member_serves_again(lab, inventory_path, tmp_path):
    cluster = load_inventory(inventory_path).cluster
    host = cluster.etcd_members[0]
    path = lab.paths.on_host(host.name, components.file_of(cluster, host, components.ETCD))
    original = path.read_bytes()
    plan = make_plan(inventory_path, "rolling-restart",
                     {"component": "etcd", "host": host.name, "set": "quota-backend-bytes=lots", "timeout": "20"})
    run = run_plan(plan, inventory_path, tmp_path / "journal.sqlite", raises=False)
    assert run.error is not None and host.name in str(run.error) and "rolled back" in str(run.error), run.error
    assert_no_outage(run, longest_gap_ms=1000, vip_retry=True)
    assert path.read_bytes() == original
    assert etcd_flags(inventory_path, "quota-backend-bytes")[host.name] == {"quota-backend-bytes": None}
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr
