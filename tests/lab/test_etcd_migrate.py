"""etcd membership operations on the shared lab, with the availability probe running.

The migration test moves the 3 members to the 3 spares under the probe, then back again by
`kubeha apply` SIGKILLed after one step and finished by `kubeha resume`, so the lab ends as it
began (each apiserver now listing every member instead of its local one)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.operations import (
    assert_no_outage, expected_fingerprint, fingerprint, kubeha_check, make_plan, migrate_killed_and_resumed,
    run_plan,
)
from helpers.wait import wait_for

from kubeha.access import ClusterAccess
from kubeha.inventory import load_inventory
from kubeha.lb import backend_states
from kubeha.model import Layout
from kubeha.operations import etcd_hosts
from kubeha.operations.etcd_view import read_etcd_state
from kubeha.plan import EngineRefused, Journal, PlanError, StepFailed, StepOutcome

pytestmark = pytest.mark.lab

FORWARD = "master1=spare1,master2=spare2,master3=spare3"
BACK = "spare1=master1,spare2=master2,spare3=master3"
# where the default run kills the way back, per layout: a member started but not promoted;
# an apiserver repointed (the full sweep kills at every boundary)
KILL_AFTER = {Layout.KUBEADM: "etcd-start-member", Layout.KUBEASZ: "apiserver-etcd-servers"}


def members(inventory_path) -> tuple[list[str], object]:
    with ClusterAccess(load_inventory(inventory_path)) as access:
        state = read_etcd_state(access.etcd())
    return sorted(m.name for m in state.members), state


def back_to_the_masters(inventory_path, tmp_path) -> None:
    """After a failed check of a completed move: put the members back on the masters."""
    if members(inventory_path)[0] == ["spare1", "spare2", "spare3"]:
        run_plan(make_plan(inventory_path, "etcd-migrate", {"replace": BACK}), inventory_path,
                 tmp_path / "repair.sqlite", probe=False)


@pytest.mark.extended_on(Layout.KUBEADM)  # CI time: the default run's migrate-masters moves a kubeadm member
def test_etcd_moves_to_the_spares_and_back_without_a_failed_request(lab, inventory_path, tmp_path):
    original = inventory_path.read_text()
    hosts = [h.name for h in lab.topology().hosts]
    before = fingerprint(inventory_path, hosts)
    forward = make_plan(inventory_path, "etcd-migrate", {"replace": FORWARD})
    try:
        run = run_plan(forward, inventory_path, tmp_path / "journal.sqlite")
        assert_no_outage(run)
        moved = fingerprint(inventory_path, hosts)
        assert moved == expected_fingerprint(forward, before)
        names, state = members(inventory_path)
        assert names == ["spare1", "spare2", "spare3"] and state.leader_id
        assert [h.name for h in load_inventory(inventory_path).cluster.etcd_members] == ["spare1", "spare2", "spare3"]
        with Journal(tmp_path / "journal.sqlite") as journal:
            outcomes = {r.step_id: r.outcome for r in journal.steps(forward.operation_id)}
        assert set(outcomes.values()) <= {StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE}, outcomes
        assert len(outcomes) == len(forward.steps)
    except BaseException:
        back_to_the_masters(inventory_path, tmp_path)  # the lab is shared: repair, then report
        raise

    # back again by `kubeha apply`, SIGKILLed after a step, finished by `kubeha resume`
    # (a sample: every boundary is `-m crash_sweep`, tests/lab/test_etcd_resume.py)
    back = make_plan(inventory_path, "etcd-migrate", {"replace": BACK})
    point = next(s.id for s in back.steps if s.kind == KILL_AFTER[lab.topology().cluster.layout])
    migrate_killed_and_resumed(lab, inventory_path, tmp_path / "killed", BACK, point, moved)
    assert members(inventory_path)[0] == ["master1", "master2", "master3"]
    assert inventory_path.read_text() == original
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_new_member_whose_etcd_cannot_start_is_rolled_back_and_named(lab, inventory_path, tmp_path):
    # a read-only data dir on spare1, as a failed disk would leave it
    lab.on("spare1", ["mount", "--bind", "/var/lib/etcd", "/var/lib/etcd"])
    lab.on("spare1", ["mount", "-o", "remount,bind,ro", "/var/lib/etcd"])
    try:
        plan = make_plan(inventory_path, "etcd-migrate", {"replace": "master1=spare1"})
        with pytest.raises(StepFailed) as failed:
            run_plan(plan, inventory_path, tmp_path / "journal.sqlite", probe=False)
        message = str(failed.value)
        print(message)
        assert "spare1" in message and "read-only" in message.lower()
        assert "kubeha resume" in message or "kubeha rollback" in message
        names, state = members(inventory_path)
        assert names == ["master1", "master2", "master3"]
        assert all(state.healthy(m) for m in state.members) and not any(m.is_learner for m in state.members)
        with Journal(tmp_path / "journal.sqlite") as journal:
            outcomes = {r.step_id: r.outcome for r in journal.steps(plan.operation_id)}
        assert outcomes["start-member-spare1"] is StepOutcome.ROLLED_BACK
        inventory = load_inventory(inventory_path)
        with ClusterAccess(inventory) as access:  # lab hosts share one process table: ask the host
            cluster = access.cluster
            assert not etcd_hosts.member_process_running(access, cluster, cluster.host("spare1"))
            assert not etcd_hosts.data_dir_holds_member(access, cluster, cluster.host("spare1"))
    finally:
        lab.on("spare1", ["umount", "/var/lib/etcd"], check=False)


def _stop_etcd(lab, host: str, layout: Layout) -> None:
    if layout is Layout.KUBEADM:
        lab.on(host, ["mv", "/etc/kubernetes/manifests/etcd.yaml", "/etc/kubernetes/etcd.yaml.stopped"])
    else:
        lab.on(host, ["systemctl", "stop", "etcd"])


def _start_etcd(lab, host: str, layout: Layout) -> None:
    if layout is Layout.KUBEADM:
        lab.on(host, ["mv", "/etc/kubernetes/etcd.yaml.stopped", "/etc/kubernetes/manifests/etcd.yaml"])
    else:
        lab.on(host, ["systemctl", "start", "etcd"])


def _backup_dirs(lab, operation_id: str) -> list[str]:
    found = []
    for host in [h.name for h in lab.topology().hosts]:
        listing = lab.on(host, ["ls", "/var/lib/kubeha/backups"], check=False).stdout.split()
        found += [f"{host}:{d}" for d in listing if d.startswith(operation_id)]
    return found


def _sent_nowhere(inventory_path, server: str) -> bool:
    """No haproxy sends ``server`` new connections."""
    with ClusterAccess(load_inventory(inventory_path)) as access:
        states = backend_states(access, access.cluster)
        return all(server not in states.ready_servers(lb) for lb in states.haproxy)


def test_unsafe_changes_are_refused_before_any_host_is_touched(lab, inventory_path, tmp_path):
    # the simulator's model after every step of a real plan, on the live cluster
    shown = subprocess.run([sys.executable, "-m", "kubeha.cli", "plan", "etcd", "migrate", "--replace", FORWARD,
                            "--verify", "-i", str(inventory_path), "--journal", str(tmp_path / "j.sqlite")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    model = shown.stdout.split("simulated, step by step")[1]
    assert "remove-member-master1: voters" in model and "refused:" not in model
    assert "update-inventory: voters spare1, spare2, spare3 (3 healthy, quorum 2)" in model
    with pytest.raises(PlanError, match="tolerate no failure"):
        make_plan(inventory_path, "etcd-remove", {"host": "master1,master2"})
    with pytest.raises(PlanError, match="leave 4 members"):
        make_plan(inventory_path, "etcd-add", {"host": "spare1"})

    layout = load_inventory(inventory_path).cluster.layout
    _stop_etcd(lab, "master3", layout)
    try:
        wait_for(lambda: not members(inventory_path)[1].healthy(
            next(m for m in members(inventory_path)[1].members if m.name == "master3")), 30, "master3's etcd to stop")
        if layout is Layout.KUBEADM:
            # its apiserver reads only its own etcd: until haproxy marks it down, a read the
            # planning below sends through the VIP can be cut (on-marked-down shutdown-sessions)
            wait_for(lambda: _sent_nowhere(inventory_path, "master3"), 30, "haproxy to mark master3 down")
        with pytest.raises(PlanError, match="master3"):
            make_plan(inventory_path, "etcd-migrate", {"replace": "master1=spare1"})
    finally:
        _start_etcd(lab, "master3", layout)
        wait_for(lambda: all(s.healthy(m) for s in [members(inventory_path)[1]] for m in s.members), 60,
                 "master3's etcd to be back")

    # a plan edited by hand to remove the leader without moving leadership off it
    _, state = members(inventory_path)
    leader = next(m.name for m in state.members if m.id == state.leader_id)
    plan = make_plan(inventory_path, "etcd-migrate", {"replace": f"{leader}=spare1"})
    unsafe = plan.model_copy(update={"steps": (plan.step(f"remove-member-{leader}"),)})
    with pytest.raises(EngineRefused) as refused:
        run_plan(unsafe, inventory_path, tmp_path / "journal.sqlite", probe=False)
    print(refused.value)
    assert "is the leader" in str(refused.value)
    assert members(inventory_path)[0] == ["master1", "master2", "master3"]
    assert _backup_dirs(lab, plan.operation_id) == []


@pytest.mark.layouts(Layout.KUBEADM)  # the same steps as the migration's, on one layout (CI time)
def test_two_members_added_and_rolled_back_leave_the_cluster_as_it_was(lab, inventory_path, tmp_path):
    hosts = [h.name for h in lab.topology().hosts]
    before = fingerprint(inventory_path, hosts)
    journal = tmp_path / "journal.sqlite"
    plan = make_plan(inventory_path, "etcd-add", {"host": "spare1,spare2"})
    run_plan(plan, inventory_path, journal, probe=False)
    assert members(inventory_path)[0] == ["master1", "master2", "master3", "spare1", "spare2"]
    undone = subprocess.run([sys.executable, "-m", "kubeha.cli", "rollback", plan.operation_id, "--yes", "--no-probe",
                             "-i", str(inventory_path), "--journal", str(journal)],
                            capture_output=True, text=True, timeout=600)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert fingerprint(inventory_path, hosts) == before
