"""ClusterAccess on a real lab: commands and files on every host, etcd and the API directly
and through SSH tunnels, TLS verified on the tunnel too, credentials private and removed."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import httpx
import pytest

from kubeha.access import ClusterAccess, TunnelRoutes
from kubeha.errors import HostError
from kubeha.etcd.gateway import EtcdError
from kubeha.inventory import Inventory, load_inventory
from kubeha.kube import KubeError, list_nodes
from kubeha.lab import Lab
from kubeha.model import Host
from kubeha.pki import new_ca

pytestmark = pytest.mark.lab


@pytest.fixture
def inventory(lab: Lab) -> Inventory:
    return load_inventory(lab.paths.inventory)


def test_runs_commands_and_reads_files_on_every_host(inventory: Inventory, lab: Lab):
    # the spares too: 9 hosts
    cluster = inventory.cluster.model_copy(update={"hosts": inventory.cluster.hosts + lab.topology().spares})
    started = time.monotonic()
    with ClusterAccess(inventory.model_copy(update={"cluster": cluster})) as access:
        opened = time.monotonic() - started
        assert access.connect_errors == {}
        outcomes = access.run_all("uname -n")
        assert {name: o.value.stdout.strip() for name, o in outcomes.items()} == {h.name: h.name for h in cluster.hosts}
        master = cluster.masters[0]
        assert access.run(master, "exit 3").exit_status == 3
        assert f"{master.address}\t{master.name}" in access.get_file(master.name, "/etc/hosts").decode()
        assert access.get_file(master, "/etc/no-such-file") is None
        assert access.stat(master, cluster.paths.ca.key).mode & 0o777 == 0o600
        some = access.run_all(lambda conn: conn.stat(cluster.paths.admin_kubeconfig), hosts=cluster.masters)
        assert set(some) == {m.name for m in cluster.masters} and all(o.value for o in some.values())
    print(f"ClusterAccess open to {len(cluster.hosts)} hosts: {opened:.2f} s")


def test_a_host_ssh_cannot_reach_is_a_connect_error(inventory: Inventory, lab: Lab):
    spare = lab.topology().spares[0]
    closed_port = Host(name=spare.name, address=spare.address, ssh_port=2222)  # sshd listens on 22
    cluster = inventory.cluster.model_copy(update={"hosts": inventory.cluster.hosts + (closed_port,)})
    with ClusterAccess(inventory.model_copy(update={"cluster": cluster})) as access:
        assert set(access.connect_errors) == {spare.name}
        with pytest.raises(HostError, match=f"{spare.name}: cannot reach SSH"):
            access.run(spare.name, "true")
        assert not access.run_all("true")[spare.name].ok


@pytest.mark.parametrize("prefer_tunnel", [False, True], ids=["direct", "tunnel"])
def test_etcd_and_the_api(inventory: Inventory, prefer_tunnel: bool):
    cluster = inventory.cluster
    with ClusterAccess(inventory, prefer_tunnel=prefer_tunnel) as access:
        assert len(access.etcd().member_list()) == 3
        member = cluster.etcd_members[1]
        assert access.etcd_member(member).status(f"https://{member.address}:2379").member_id
        assert len(list_nodes(access.kube())) == 6
        assert len(list_nodes(access.kube_at(f"https://{cluster.masters[2].address}:6443"))) == 6
        assert access.http(cluster.endpoint).get("/readyz").status_code == 200
        routes = access.routes([(str(cluster.vip.address), cluster.vip.port),
                                (str(member.address), 2379)])
        assert all((port is not None) is prefer_tunnel for port in routes.values()), routes
        secrets = [*access.etcd_tls_files(), *access.kube_tls_files()]
        # in memory only this process can open, not on disk where a killed run would leave them
        assert all(path.startswith("/proc/self/fd/") for path in secrets), secrets
        assert all(Path(path).read_bytes().startswith(b"-----BEGIN") for path in secrets)
    # closed: each fd is gone (or already reused for some other file)
    assert not any(os.path.exists(path) and "kubeha-" in os.readlink(path) for path in secrets)


def test_the_tunnel_still_verifies_tls(inventory: Inventory):
    cluster = inventory.cluster
    first, second = cluster.etcd_members[:2]
    with ClusterAccess(inventory, prefer_tunnel=True) as access:
        ca, cert, key = access.etcd_tls_files()
        to_first = access.routes([(str(first.address), 2379)])[(str(first.address), 2379)]
        # the first member's tunnel presented as the second: its certificate does not name it
        verify = ssl.create_default_context(cafile=ca)
        verify.load_cert_chain(cert, key)
        misrouted = TunnelRoutes(httpx.HTTPTransport(verify=verify), {(str(second.address), 2379): to_first})
        with httpx.Client(transport=misrouted) as client:
            with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
                client.get(f"https://{second.address}:2379/version")
        # a CA that did not sign the servers: the etcd, API and HTTP clients all refuse them
        Path(ca).write_bytes(new_ca("not-the-etcd-ca").cert_pem)
        with pytest.raises(EtcdError):
            access.etcd().member_list()
        kube_ca = access.kube_tls_files()[0]
        Path(kube_ca).write_bytes(new_ca("not-the-cluster-ca").cert_pem)
        with pytest.raises(KubeError, match="cannot reach the API"):
            list_nodes(access.kube(), timeout=3)
        with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
            access.http(cluster.endpoint).get("/readyz")
