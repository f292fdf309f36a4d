"""The cluster-side lock against real etcd: one run per cluster, a dead holder's lock expires."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from types import MappingProxyType, SimpleNamespace

import pytest
from helpers.etcd import etcd_cluster

from kubeha.etcd.gateway import EtcdClient
from kubeha.plan import Change, ChangeKind, Journal, OperationLocked, Plan, Registry, RunOutcome, Step, StepKind, apply
from kubeha.plan.cluster_lock import LOCK_KEY, ClusterLock, ClusterLocked, ClusterLockLost, cluster_lock_for

OP = "toy-20240501-101500-abcd"
SHORT_TTL = 2


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


def client_for(etcd) -> EtcdClient:
    return EtcdClient(etcd.endpoints, etcd.ca_file, etcd.cert_file, etcd.key_file)


@pytest.fixture
def client(etcd):
    with client_for(etcd) as c:
        yield c


def held_by(client: EtcdClient) -> dict | None:
    current = client.get(LOCK_KEY)
    return json.loads(current.value) if current else None


def test_the_lock_is_a_key_in_etcd_while_held_and_gone_after(client):
    with ClusterLock(client, OP, "alice@laptop pid 1") as lock:
        held = held_by(client)
        assert (held["operation_id"], held["holder"], held["ttl"]) == (OP, "alice@laptop pid 1", 30)
        assert datetime.fromisoformat(held["started"]) <= datetime.now(timezone.utc)
        lock.check()
        assert lock.lost is None
    assert held_by(client) is None


def test_a_second_holder_is_refused_with_one_line_naming_the_first(client):
    with ClusterLock(client, OP, "alice@laptop pid 1"):
        started = held_by(client)["started"]
        with pytest.raises(ClusterLocked) as refused:
            ClusterLock(client, "other-op", "bob@desk pid 2").__enter__()
        assert isinstance(refused.value, OperationLocked)
        assert str(refused.value) == (
            f"cluster is locked by operation {OP} (alice@laptop pid 1, since {started}): "
            "wait for it, or if that run is dead the lock expires within 30 s")
        assert held_by(client)["holder"] == "alice@laptop pid 1"  # the refused one changed nothing
    with ClusterLock(client, "other-op", "bob@desk pid 2"):  # free once released
        assert held_by(client)["operation_id"] == "other-op"


HOLDER_SCRIPT = """
import socket, sys, time
from kubeha.etcd.gateway import EtcdClient
from kubeha.plan.cluster_lock import ClusterLock
endpoint, ca, cert, key, operation_id, ttl, machine = sys.argv[1:]
if machine != "here":
    socket.gethostname = lambda: machine
with ClusterLock(EtcdClient([endpoint], ca, cert, key), operation_id, "killed@box pid 3", int(ttl)):
    time.sleep(60)
"""


def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fail naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def acquired(client: EtcdClient, operation_id: str, ttl: int) -> bool:
    try:
        with ClusterLock(client, operation_id, "resumer@other pid 4", ttl):
            return True
    except ClusterLocked:
        return False


def killed_holder(etcd, client, machine: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, etcd.endpoints[0], str(etcd.ca_file),
                               str(etcd.cert_file), str(etcd.key_file), OP, str(SHORT_TTL), machine])
    try:
        wait_until(lambda: held_by(client) is not None, 10, "the subprocess taking the lock")
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_on_this_machine_is_known_dead_and_its_lock_taken_at_once(etcd, client):
    killed_holder(etcd, client, "here")
    with ClusterLock(client, OP, "resumer@here pid 5", SHORT_TTL):
        assert held_by(client)["holder"] == "resumer@here pid 5"


def test_a_killed_holder_elsewhere_blocks_the_same_operation_until_its_lease_expires(etcd, client):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, etcd.endpoints[0], str(etcd.ca_file),
                               str(etcd.cert_file), str(etcd.key_file), OP, str(SHORT_TTL), "another-machine"])
    try:
        wait_until(lambda: held_by(client) is not None, 10, "the subprocess taking the lock")
        holder.kill()
        holder.wait()
        killed_at = time.monotonic()
        with pytest.raises(ClusterLocked, match=f"operation {OP} \\(killed@box pid 3, .*within {SHORT_TTL} s"):
            ClusterLock(client, OP, "resumer@other pid 4", SHORT_TTL).__enter__()
        wait_until(lambda: acquired(client, OP, SHORT_TTL), SHORT_TTL + 3, "taking the expired lock")
        assert time.monotonic() - killed_at > SHORT_TTL / 3  # not freed by the kill itself
    finally:
        holder.kill()
        holder.wait()


def test_renewal_keeps_the_lock_beyond_its_ttl(client):
    with ClusterLock(client, OP, "alice@laptop pid 1", SHORT_TTL) as lock:
        time.sleep(SHORT_TTL * 1.75)
        assert held_by(client)["holder"] == "alice@laptop pid 1"
        assert not acquired(client, "other-op", SHORT_TTL)
        lock.check()


def test_losing_etcd_makes_check_raise_within_the_ttl(tmp_path):
    with etcd_cluster(tmp_path / "lost-etcd") as etcd, client_for(etcd) as client:
        with ClusterLock(client, OP, "alice@laptop pid 1", SHORT_TTL) as lock:
            etcd.stop(0)
            waited = wait_until(lambda: lock.lost is not None, SHORT_TTL + 1, "noticing the loss")
            assert waited <= SHORT_TTL
            with pytest.raises(ClusterLockLost) as lost:
                lock.check()
            message = str(lost.value)
            assert "\n" not in message
            assert message.startswith(f"lost the cluster lock of operation {OP} (etcd lease not renewed for ")
            assert f"kubeha resume {OP}" in message


class GatedSetKey(StepKind):
    """Sets its change's target in a dict; ``apply`` waits for ``gate`` after setting ``entered``."""

    name = "gated-set-key"

    def __init__(self, entered: threading.Event, gate: threading.Event) -> None:
        self.entered, self.gate = entered, gate
        self.applied: list[str] = []

    def is_done(self, ctx) -> bool:
        return ctx.view.get(ctx.step.changes[0].target) == ctx.step.changes[0].after

    def apply(self, ctx) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        self.applied.append(ctx.step.id)
        ctx.cluster[ctx.step.changes[0].target] = ctx.step.changes[0].after

    def verify(self, ctx) -> None:
        assert self.is_done(ctx)

    def rollback(self, ctx) -> None:
        ctx.cluster.pop(ctx.step.changes[0].target, None)


def gated_plan() -> Plan:
    step = Step(id="one", kind=GatedSetKey.name, title="set a to 1", hosts=("toy",),
                changes=(Change(kind=ChangeKind.FILE, target="a", before=None, after="1", host="toy"),),
                safety_checks=(), verification="a reads 1", rollback="unset a", estimated_seconds=1,
                reversible=True, arguments={})
    return Plan(operation="toy", operation_id=OP, arguments={}, created=datetime(2024, 5, 1, tzinfo=timezone.utc),
                inventory_digest="sha256:toy", steps=(step,))


def test_of_two_engine_runs_on_one_cluster_only_one_runs_the_plan(tmp_path, client):
    """Two operators' machines (their own journals, so no local flock between them) run one plan."""
    entered, gate = threading.Event(), threading.Event()
    kind = GatedSetKey(entered, gate)
    registry = Registry()
    registry.add_kind(kind)
    toy_cluster: dict[str, str] = {}

    def run(machine: str) -> RunOutcome:
        with Journal(tmp_path / machine / "journal.sqlite") as journal:
            return apply(gated_plan(), registry, lambda: MappingProxyType(dict(toy_cluster)), journal,
                         cluster=toy_cluster,
                         cluster_lock=lambda plan: ClusterLock(client, plan.operation_id, f"op@{machine} pid 1")).outcome

    first: list[RunOutcome] = []
    first_run = threading.Thread(target=lambda: first.append(run("first")))
    first_run.start()
    try:
        assert entered.wait(10)
        with pytest.raises(ClusterLocked, match=f"locked by operation {OP} \\(op@first pid 1, "):
            run("second")
    finally:
        gate.set()
        first_run.join(10)
    assert first == [RunOutcome.DONE]
    assert kind.applied == ["one"] and toy_cluster == {"a": "1"}
    assert held_by(client) is None
    assert run("second") is RunOutcome.DONE  # free again: the step is found done and skipped
    assert kind.applied == ["one"]


def test_cluster_lock_for_locks_with_the_clusters_etcd(client):
    access = SimpleNamespace(etcd=lambda: client)
    with cluster_lock_for(access, ttl=7)(SimpleNamespace(operation_id=OP)) as lock:  # type: ignore[arg-type]
        held = held_by(client)
        assert (lock.ttl, held["operation_id"], held["ttl"]) == (7, OP, 7)
        assert held["holder"].endswith(f"pid {os.getpid()}")
