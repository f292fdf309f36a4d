"""etcd membership, leadership, health and snapshots against real etcd members, and the
pure quorum rules (kubeha.etcd.quorum) as properties over member sets of 1 to 7."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from helpers.etcd import etcd_cluster
from hypothesis import given
from hypothesis import strategies as st

from kubeha.etcd.gateway import (
    EtcdClient,
    EtcdError,
    EtcdMember,
    _json_objects,
    initial_cluster,
    verify_snapshot,
)
from kubeha.etcd.quorum import (
    PROMOTE_READY,
    can_add_learner,
    can_promote,
    can_remove,
    quorum,
    tolerates_failures,
    voters_after,
)

T = TypeVar("T")

# etcd refuses member changes until its members have been connected for 5 s
MEMBER_CHANGE_WAIT = 10.0


def retry_unhealthy(change: Callable[[], T], timeout: float = MEMBER_CHANGE_WAIT) -> T:
    """``change()``, retried while etcd answers "unhealthy cluster" (its 5 s rule)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return change()
        except EtcdError as e:
            if "unhealthy cluster" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Poll ``condition`` until true; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def client_for(etcd) -> EtcdClient:
    return EtcdClient(etcd.endpoints, etcd.ca_file, etcd.cert_file, etcd.key_file)


def by_name(client: EtcdClient) -> dict[str, EtcdMember]:
    return {m.name: m for m in client.member_list()}


# --- real etcd: the learner lifecycle ------------------------------------------------------


def test_learner_add_promote_move_leader_remove(tmp_path):
    with etcd_cluster(tmp_path, members=3) as etcd, client_for(etcd) as client:
        for i in range(50):  # a log worth catching up on
            client.put(f"/t/member/{i}", b"x" * 1000)
        extra = etcd.new_member()
        peer_url = etcd.members[extra].peer_url

        new, members = retry_unhealthy(lambda: client.member_add([peer_url], learner=True))
        assert new.is_learner and new.name == "" and new.peer_urls == (peer_url,)
        assert new in members and len(members) == 4
        with pytest.raises(EtcdError, match="cannot change its peer URLs"):
            client.member_update(new.id, ["https://127.0.0.1:1"])
        assert [m.is_learner for m in client.member_list() if m.id == new.id] == [True]

        with pytest.raises(EtcdError) as refused:
            client.member_promote(new.id)
        assert "can only promote a learner member which is in sync with leader" in str(refused.value)
        assert "https://127.0.0.1:" in str(refused.value) and "\n" not in str(refused.value)
        assert client.learner_progress(new.id) == 0.0  # not started: no client URL

        etcd.join(extra, initial_cluster(client.member_list(), new.id, etcd.members[extra].name))
        catch_up = wait_until(lambda: client.learner_progress(new.id) >= PROMOTE_READY,
                              "the learner catching up")
        assert by_name(client)[etcd.members[extra].name].is_learner
        assert can_add_learner(client.member_list()) is not None
        # etcd answers "unhealthy cluster" until the learner has been connected for 5 s
        with pytest.raises(EtcdError, match="too many learner members in cluster"):
            retry_unhealthy(lambda: client.member_add(["https://127.0.0.1:2"], learner=True))
        assert can_promote(client.learner_progress(new.id)) is None
        promote_start = time.monotonic()
        members = client.member_promote(new.id)
        promote = time.monotonic() - promote_start
        assert [m.is_learner for m in members] == [False] * 4

        new_name = etcd.members[extra].name
        move_start = time.monotonic()
        client.move_leader(new.id)
        move = time.monotonic() - move_start
        leader, status = client.leader()
        assert leader.name == new_name and status.is_leader
        client.move_leader(new.id)  # already the leader: nothing to do

        health = client.cluster_health()
        assert health.healthy and health.leader_id == new.id
        healthy_ids = {m.id for m in health.members}
        assert "is the leader" in can_remove(health.members, healthy_ids, new.id, new.id)

        removed = by_name(client)["etcd0"]
        assert can_remove(health.members, healthy_ids, removed.id, new.id) is None
        try:
            members = client.member_remove(removed.id)
        except EtcdError as e:
            # asked of etcd0 itself, the answer can be lost as it stops: the next endpoint
            # then finds no such member (the operations ask whether a change is done after an error)
            assert "member not found" in str(e) and removed.id not in {m.id for m in client.member_list()}, e
            members = client.member_list()
        assert sorted(m.name for m in members) == ["etcd1", "etcd2", new_name]
        etcd.members[0].process.wait(timeout=10)  # etcd stops a removed member itself

        # etcd itself lets the leader go (a new one is elected); can_remove refused above
        members = retry_unhealthy(lambda: client.member_remove(new.id))
        assert sorted(m.name for m in members) == ["etcd1", "etcd2"]
        wait_until(lambda: client.cluster_health().healthy, "a new leader")
        assert client.leader()[0].name in ("etcd1", "etcd2")
        print(f"\nlearner caught up in {catch_up:.2f} s, promoted in {promote:.3f} s, "
              f"leadership moved in {move:.3f} s")


# --- real etcd: health, snapshot ---------------------------------------------------------


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory):
    with etcd_cluster(tmp_path_factory.mktemp("etcd3"), members=3) as cluster:
        yield cluster


def test_cluster_health_names_a_stopped_member(etcd3):
    with client_for(etcd3) as client:
        assert client.cluster_health().healthy
        etcd3.stop(2)
        try:
            health = client.cluster_health(timeout=0.5)
            assert not health.healthy and health.leader_id != 0
            assert len(health.unhealthy) == 1 and health.unhealthy[0].startswith("etcd2: ")
        finally:
            etcd3.start(2)
            etcd3.wait_ready(2)


def test_member_update_corrects_an_unstarted_voter(etcd3):
    with client_for(etcd3) as client:
        # 4 voters, 3 up: quorum 3 still holds
        new, _ = retry_unhealthy(lambda: client.member_add(["https://127.0.0.1:1"], learner=False))
        try:
            members = client.member_update(new.id, ["https://127.0.0.1:2"])
            assert [m.peer_urls for m in members if m.id == new.id] == [("https://127.0.0.1:2",)]
        finally:
            client.member_remove(new.id)
        assert len(client.member_list()) == 3


def test_snapshot_is_written_private_and_verified(etcd3, tmp_path):
    with client_for(etcd3) as client:
        revision = client.put("/t/snapshot", b"v" * 10_000)
        target = tmp_path / "etcd.db"
        start = time.monotonic()
        status = client.snapshot(target)
        print(f"\nsnapshot of {target.stat().st_size} bytes in {time.monotonic() - start:.3f} s")
    assert status.revision >= revision > 0 and status.total_keys >= 1
    assert target.stat().st_mode & 0o777 == 0o600
    assert verify_snapshot(target) == status
    assert [p.name for p in tmp_path.iterdir()] == ["etcd.db"]  # no partial file left


def test_verify_snapshot_rejects_garbage_and_missing_etcdctl(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a bolt database" * 100)
    with pytest.raises(EtcdError, match="is not valid") as invalid:
        verify_snapshot(garbage)
    assert "\n" not in str(invalid.value)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EtcdError, match="etcdctl is not on PATH"):
        verify_snapshot(garbage)


# --- pure helpers --------------------------------------------------------------------------


def member(member_id: int, name: str = "", *, learner: bool = False) -> EtcdMember:
    return EtcdMember(member_id, name, (f"https://10.0.0.{member_id}:2380",), (), learner)


def test_initial_cluster_names_the_new_member_and_refuses_an_unstarted_one():
    members = [member(1, "a"), member(2, "b"), member(3)]
    assert initial_cluster(members, 3, "c") == (
        "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380,c=https://10.0.0.3:2380")
    with pytest.raises(EtcdError, match="was added but never started"):
        initial_cluster([*members, member(4)], 4, "d")


@given(st.lists(st.dictionaries(st.sampled_from("abc"), st.integers()), max_size=5),
       st.data())
def test_json_objects_split_anywhere(objects, data):
    separator = data.draw(st.sampled_from(["", "\n", "\r\n"]))
    text = separator.join(json.dumps(o) for o in objects)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(_json_objects(iter(chunks))) == objects


def test_json_objects_truncated():
    with pytest.raises(ValueError, match="truncated"):
        list(_json_objects(iter(['{"a": 1}\n{"b":'])))


# --- quorum rules as properties ---------------------------------------------------------------


@st.composite
def clusters(draw):
    """(members, healthy ids, leader id): 1-7 members, at least one voter, some unhealthy;
    the leader is a healthy voter, or 0 (no leader)."""
    learners = draw(st.lists(st.booleans(), min_size=1, max_size=7))
    if all(learners):
        learners[0] = False
    members = [member(i + 1, f"m{i + 1}", learner=lrn) for i, lrn in enumerate(learners)]
    healthy = draw(st.sets(st.sampled_from([m.id for m in members])))
    candidates = [m.id for m in members if not m.is_learner and m.id in healthy]
    leader = draw(st.sampled_from(candidates)) if candidates else 0
    return members, healthy, leader


@given(st.integers(1, 100))
def test_quorum_is_the_smallest_majority(voters):
    q = quorum(voters)
    assert 2 * q > voters >= 2 * (q - 1)  # two quorums always overlap; one less would not
    assert tolerates_failures(voters, voters) == (voters - 1) // 2


def test_quorum_needs_a_voter():
    with pytest.raises(ValueError):
        quorum(0)


@given(clusters())
def test_voters_after(cluster):
    members, _, _ = cluster
    voters = sum(not m.is_learner for m in members)
    assert voters_after(members) == voters
    assert voters_after(members, add_voter=True) == voters + 1
    assert voters_after(members, remove=999, promote=999) == voters
    for m in members:
        assert voters_after(members, promote=m.id) == voters + m.is_learner
        assert voters_after(members, remove=m.id) == voters - (not m.is_learner)


@given(clusters(), st.integers(1, 8))
def test_can_remove_keeps_a_healthy_majority(cluster, target):
    members, healthy, leader = cluster
    reason = can_remove(members, healthy, target, leader)
    by_id = {m.id: m for m in members}
    if target not in by_id:
        assert reason == f"{target:x} is not a member"
        return
    if by_id[target].is_learner:
        assert reason is None
        return
    remaining = [m for m in members if not m.is_learner and m.id != target]
    healthy_remaining = [m for m in remaining if m.id in healthy]
    safe = target != leader and remaining and 2 * len(healthy_remaining) > len(remaining)
    assert (reason is None) == bool(safe), reason
    if reason is not None:
        assert f"m{target}" in reason and "\n" not in reason


@given(clusters())
def test_can_add_learner_only_without_one(cluster):
    members, _, _ = cluster
    reason = can_add_learner(members)
    assert (reason is None) == (not any(m.is_learner for m in members))


@given(st.floats(0.0, 1.0))
def test_can_promote_from_ninety_percent(progress):
    reason = can_promote(progress)
    assert (reason is None) == (progress >= 0.9)
    if reason is not None:
        assert "90% of" not in reason  # a refused learner never shows as at 90%
