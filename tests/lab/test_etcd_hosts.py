"""The host side of an etcd member on the shared lab: a spare joins as a learner, catches
up and leaves again; a spare whose data dir is read-only fails to join, saying so.

Each test puts the lab back as it found it: the 3 masters the only members, healthy, and
the spare's files as they were (restored from the backup set).
"""

from __future__ import annotations

import time

import pytest
from helpers.wait import wait_for

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities
from kubeha.etcd.errors import EtcdError
from kubeha.etcd.gateway import EtcdClient, initial_cluster
from kubeha.hosts import BackupSet
from kubeha.inventory import Inventory, SshDefaults
from kubeha.model import Host
from kubeha.operations import etcd_hosts
from kubeha.operations.etcd_hosts import EtcdHostError

pytestmark = pytest.mark.lab

MASTERS = ["master1", "master2", "master3"]


@pytest.fixture
def access(lab):
    """Access to the lab's cluster and its spares (hosts without roles)."""
    topology = lab.topology()
    cluster = topology.cluster.model_copy(update={"hosts": topology.cluster.hosts + topology.spares})
    inventory = Inventory(cluster=cluster, ssh=SshDefaults(key_file=lab.paths.ssh_key,
                                                           known_hosts=lab.paths.known_hosts))
    with ClusterAccess(inventory) as access:
        assert access.connect_errors == {}
        yield access


def _retrying(change, timeout: float = 15.0):
    """etcd 3.4 refuses a membership change for ~5 s after the previous one ("unhealthy cluster")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return change()
        except EtcdError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _remove_if_member(client: EtcdClient, member_id: int) -> None:
    if any(m.id == member_id for m in client.member_list()):
        _retrying(lambda: client.member_remove(member_id))


def _healthy_with_masters_only(client: EtcdClient) -> bool:
    health = client.cluster_health()
    return health.healthy and sorted(m.name for m in health.members) == MASTERS


def _add_learner(access: ClusterAccess, client: EtcdClient, host: Host):
    peer_url = access.cluster.etcd_peer_url(host)
    return _retrying(lambda: client.member_add([peer_url], learner=True))


def test_a_spare_joins_as_a_learner_catches_up_and_leaves(lab, access):
    cluster = access.cluster
    host = cluster.host("spare1")
    client = access.etcd()
    assert _healthy_with_masters_only(client)
    assert not etcd_hosts.data_dir_holds_member(access, cluster, host)
    assert not etcd_hosts.member_process_running(access, cluster, host)
    assert etcd_hosts.member_runs_as(cluster, host) == "unit"
    auth = load_authorities(access, cluster.masters[0])
    backup = BackupSet("test-etcd-hosts-join")
    p = cluster.paths
    new, members = _add_learner(access, client, host)
    try:
        etcd_hosts.prepare_member(access, cluster, host, auth, initial_cluster(members, new.id, host.name), backup)
        data_dir = access.stat(host, p.etcd_data_dir)
        assert data_dir is not None and (data_dir.mode, data_dir.uid, data_dir.gid) == (0o700, 0, 0)
        for key in (p.etcd_server.key, p.etcd_peer.key):
            stat = access.stat(host, key)
            assert stat is not None and (stat.mode, stat.uid, stat.gid) == (0o600, 0, 0)
        assert access.stat(host, p.etcd_ca.key) is None or p.etcd_ca.key == p.etcd_server.key
        unit = access.get_file(host, etcd_hosts.member_file(cluster, host))
        assert unit is not None and b"--initial-cluster-state=existing" in unit

        started = time.monotonic()
        etcd_hosts.start_member(access, cluster, host)
        etcd_hosts.wait_member_serving(access, cluster, host)
        serving = time.monotonic() - started
        member = wait_for(lambda: next((m for m in client.member_list() if m.id == new.id and m.name), None),
                          30, "the learner to publish its name")
        assert member.name == "spare1" and member.is_learner
        assert member.client_urls == (f"https://{host.address}:2379",)
        wait_for(lambda: client.learner_progress(new.id) >= 0.9, 60, "the learner to catch up")
        caught_up = time.monotonic() - started
        print(f"\n{cluster.layout.value}: spare1 serves {serving:.1f} s after start_member, "
              f"caught up after {caught_up:.1f} s")
        assert etcd_hosts.member_process_running(access, cluster, host)
        with pytest.raises(EtcdHostError) as refused:
            etcd_hosts.prepare_member(access, cluster, host, auth, "x=https://10.0.0.1:2380", backup)
        assert str(refused.value).startswith(
            "spare1 already holds etcd data in /var/lib/etcd: it is or was a member of a cluster; ")
    finally:
        _remove_if_member(client, new.id)
        etcd_hosts.stop_member(access, cluster, host, backup)
        etcd_hosts.wipe_new_member_data(access, cluster, host)
        access.restore(host, backup)
    assert not etcd_hosts.member_process_running(access, cluster, host)
    assert not etcd_hosts.data_dir_holds_member(access, cluster, host)
    assert access.stat(host, etcd_hosts.member_file(cluster, host)) is None
    assert access.stat(host, p.etcd_server.key) is None
    etcd_hosts.stop_member(access, cluster, host, backup)  # stopping a stopped member: nothing
    wait_for(lambda: _healthy_with_masters_only(client), 30, "etcd healthy with the 3 masters only",
             ignore=(EtcdError,))


def test_a_spare_whose_data_dir_is_read_only_fails_naming_host_and_cause(lab, access):
    cluster = access.cluster
    host = cluster.host("spare2")
    data_dir = str(cluster.paths.etcd_data_dir)
    client = access.etcd()
    assert _healthy_with_masters_only(client)
    auth = load_authorities(access, cluster.masters[0])
    backup = BackupSet("test-etcd-hosts-read-only")
    lab.on(host.name, ["mount", "-o", "remount,ro,bind", data_dir])  # in spare2's mount namespace only
    new = None
    try:
        new, members = _add_learner(access, client, host)
        etcd_hosts.prepare_member(access, cluster, host, auth, initial_cluster(members, new.id, host.name), backup)
        etcd_hosts.start_member(access, cluster, host)
        started = time.monotonic()
        with pytest.raises(EtcdHostError) as failed:
            etcd_hosts.wait_member_serving(access, cluster, host, timeout=10)
        message = str(failed.value)
        print(f"\n{cluster.layout.value}: after {time.monotonic() - started:.1f} s: {message}")
        assert "\n" not in message
        assert message.startswith("etcd on spare2 ")
        assert "read-only file system" in message and f"{host.address}:2379" in message
        assert "BEGIN" not in message  # no key material
    finally:
        if new is not None:
            _remove_if_member(client, new.id)
        etcd_hosts.stop_member(access, cluster, host, backup)
        lab.on(host.name, ["mount", "-o", "remount,rw,bind", data_dir])
        etcd_hosts.wipe_new_member_data(access, cluster, host)
        access.restore(host, backup)
    assert not etcd_hosts.member_process_running(access, cluster, host)
    assert access.stat(host, etcd_hosts.member_file(cluster, host)) is None
    assert "rw" in lab.on(host.name, ["findmnt", "-no", "OPTIONS", data_dir]).stdout.split(",")
    wait_for(lambda: _healthy_with_masters_only(client), 30, "etcd healthy with the 3 masters only",
             ignore=(EtcdError,))


def _enablement(access: ClusterAccess, host: Host) -> str:
    return access.run(host, ["systemctl", "is-enabled", "etcd"]).stdout.strip()


def test_a_master_leaves_and_rejoins_on_fresh_data_in_its_layouts_form(lab, access):
    """kubeadm: the static pod (manifest removed, written again); kubeasz: the unit."""
    cluster = access.cluster
    host = cluster.host("master3")
    form = etcd_hosts.member_runs_as(cluster, host)
    assert form == ("static-pod" if cluster.layout.value == "kubeadm" else "unit")
    client = access.etcd()
    assert _healthy_with_masters_only(client)
    enabled = _enablement(access, host)
    auth = load_authorities(access, cluster.masters[0])
    backup = BackupSet("test-etcd-hosts-rejoin")
    suffix = "test-etcd-hosts"
    retired = f"{cluster.paths.etcd_data_dir}/member.retired-{suffix}"  # /var/lib/etcd is a mount point
    old = next(m for m in client.member_list() if m.name == "master3")
    health = client.cluster_health()
    if health.leader_id == old.id:
        client.move_leader(next(m.id for m in health.members if m.id != old.id))
    _retrying(lambda: client.member_remove(old.id))
    try:
        removed = wait_for(lambda: (why := etcd_hosts.why_member_down(access, cluster, host))
                           and "serve" not in why and why, 30, "etcd on master3 to stop serving")
        print(f"\n{cluster.layout.value}: removed: {removed}")
        assert removed.startswith("etcd on master3 ") and "\n" not in removed
        etcd_hosts.stop_member(access, cluster, host, backup)
        assert not etcd_hosts.member_process_running(access, cluster, host)
        if form == "static-pod":
            assert access.stat(host, etcd_hosts.member_file(cluster, host)) is None
            assert etcd_hosts.why_member_down(access, cluster, host) == (
                "etcd on master3 is not set up: /etc/kubernetes/manifests/etcd.yaml is missing")
        else:
            assert access.stat(host, etcd_hosts.member_file(cluster, host)) is not None  # kept
            assert _enablement(access, host) == "disabled"
        etcd_hosts.stop_member(access, cluster, host, backup)  # again: nothing to do
        etcd_hosts.retire_member_data(access, cluster, host, suffix)
        assert not etcd_hosts.data_dir_holds_member(access, cluster, host)
        assert access.stat(host, f"{retired}/snap") is not None

        new, members = _add_learner(access, client, host)
        etcd_hosts.prepare_member(access, cluster, host, auth, initial_cluster(members, new.id, host.name), backup)
        started = time.monotonic()
        etcd_hosts.start_member(access, cluster, host)
        etcd_hosts.wait_member_serving(access, cluster, host)
        serving = time.monotonic() - started
        wait_for(lambda: client.learner_progress(new.id) >= 0.9, 60, "master3 to catch up", ignore=(EtcdError,))
        caught_up = time.monotonic() - started
        print(f"{cluster.layout.value}: master3 ({form}) serves {serving:.1f} s after start_member, "
              f"caught up after {caught_up:.1f} s")
        _retrying(lambda: client.member_promote(new.id), timeout=30)
        wait_for(lambda: _healthy_with_masters_only(client), 30, "etcd healthy with master3 a voter again",
                 ignore=(EtcdError,))
        assert not any(m.is_learner for m in client.member_list())
    finally:
        # put master3's files back as they were: its etcd restarts on them (same CA, its new data)
        before = etcd_hosts.member_pids(access, host)
        access.restore(host, backup)
        if form == "unit":
            access.run(host, ["systemctl", "daemon-reload"], check=True)
            if enabled != "enabled":
                access.run(host, ["systemctl", "disable", "etcd"], check=True)
            access.run(host, ["systemctl", "restart", "--no-block", "etcd"], check=True)
        wait_for(lambda: (pids := etcd_hosts.member_pids(access, host)) and pids != before, 30,
                 "etcd on master3 to restart on its restored files")
        access.run(host, ["rm", "-rf", "--", retired], check=True)
    wait_for(lambda: _healthy_with_masters_only(client), 60, "etcd healthy with the 3 masters only",
             ignore=(EtcdError,))
    assert _enablement(access, host) == enabled
    assert access.stat(host, etcd_hosts.member_file(cluster, host)) is not None
