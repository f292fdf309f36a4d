"""Real etcd clusters for tests: TLS with client-cert auth on 127.0.0.1 free ports.

Usage::

    from helpers.etcd import etcd_cluster

    with etcd_cluster(tmp_path, members=1) as etcd:
        etcd.endpoints      # ("https://127.0.0.1:<port>", ...) client URLs, one per member
        etcd.ca_file        # etcd CA (PEM path); server certs carry the SAN 127.0.0.1
        etcd.cert_file      # a client cert (CN "kubeha-test") and its key,
        etcd.key_file       #   signed by the etcd CA
        etcd.ca             # the CA as a kubeha.pki.KeyAndCert, to issue more certs
        etcd.stop(0)        # SIGKILL member 0 (data kept) ...
        etcd.start(0)       # ... and start it again with the same data and ports

        # one more member joining the running cluster (same certs):
        extra = etcd.new_member()                     # name and ports, not started
        new, members = client.member_add([etcd.members[extra].peer_url], learner=True)
        etcd.join(extra, initial_cluster(members, new.id, etcd.members[extra].name))

Every member (joined ones too) is killed when the ``with`` block ends, whatever happens
inside it.
Members run ``/usr/bin/etcd`` with data, certs and logs (``<name>.log``) under the given
directory.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import httpx

from kubeha import pki

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def write_pair(directory: Path, stem: str, pair: pki.KeyAndCert) -> tuple[Path, Path]:
    """Write ``<stem>.crt`` and ``<stem>.key`` into ``directory``; return (cert, key) paths."""
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    key.chmod(0o600)
    return cert, key


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def wait_for_https(url: str, context: ssl.SSLContext, timeout: float = 15.0,
                   healthy: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
                   ) -> None:
    """GET ``url`` until ``healthy(response)``; TimeoutError naming the URL after ``timeout``."""
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=context, timeout=1) as client:
        while True:
            try:
                if healthy(client.get(url)):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become healthy in {timeout} s")
            time.sleep(0.05)


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    process: subprocess.Popen | None = None
    # set for a member joining a running cluster: its --initial-cluster ("name=peerURL,...")
    joining_cluster: str | None = None

    @property
    def client_url(self) -> str:
        return f"https://{LOCALHOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{LOCALHOST}:{self.peer_port}"


@dataclass
class EtcdCluster:
    directory: Path
    ca: pki.KeyAndCert
    ca_file: Path
    cert_file: Path
    key_file: Path
    members: list[EtcdMember] = field(default_factory=list)
    _server_cert: Path = Path()
    _server_key: Path = Path()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    def _command(self, member: EtcdMember) -> list[str]:
        if member.joining_cluster is None:
            initial, state = ",".join(f"{m.name}={m.peer_url}" for m in self.members), "new"
        else:
            initial, state = member.joining_cluster, "existing"
        tls = [f"--cert-file={self._server_cert}", f"--key-file={self._server_key}",
               f"--trusted-ca-file={self.ca_file}", "--client-cert-auth"]
        peer_tls = [f"--peer-cert-file={self._server_cert}", f"--peer-key-file={self._server_key}",
                    f"--peer-trusted-ca-file={self.ca_file}", "--peer-client-cert-auth"]
        return [
            "/usr/bin/etcd", f"--name={member.name}",
            f"--data-dir={self.directory / member.name}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}", f"--initial-cluster-state={state}",
            "--initial-cluster-token=kubeha-test",
            # fast elections keep tests that stop members short
            "--heartbeat-interval=50", "--election-timeout=500",
            *tls, *peer_tls,
        ]

    def start(self, index: int) -> None:
        member = self.members[index]
        log = open(self.directory / f"{member.name}.log", "ab")
        with log:
            member.process = subprocess.Popen(self._command(member), stdout=log,
                                              stderr=subprocess.STDOUT)

    def stop(self, index: int) -> None:
        process = self.members[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def new_member(self) -> int:
        """Reserve a name and free ports for one more member (not started, not yet known
        to etcd); return its index. Add it with member_add, then :meth:`join` it."""
        self.members.append(EtcdMember(f"etcd{len(self.members)}", free_port(), free_port()))
        return len(self.members) - 1

    def join(self, index: int, initial_cluster: str) -> None:
        """Start member ``index`` (from :meth:`new_member`, already added to etcd) with
        ``--initial-cluster-state=existing`` and ``initial_cluster``, as the list
        member_add returned gives it; it is not waited for (a learner serves no /health)."""
        self.members[index].joining_cluster = initial_cluster
        self.start(index)

    def wait_ready(self, index: int, timeout: float = 15.0) -> None:
        """Wait until member ``index`` reports itself healthy (it has a leader)."""
        wait_for_https(f"{self.members[index].client_url}/health",
                       tls_context(self.ca_file, self.cert_file, self.key_file), timeout,
                       healthy=lambda r: r.status_code == 200 and r.json().get("health") == "true")


@contextlib.contextmanager
def etcd_cluster(directory: Path, members: int = 1) -> Iterator[EtcdCluster]:
    """Start ``members`` etcd members with TLS + client-cert auth; kill them all on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca("etcd-ca")
    ca_file = directory / "etcd-ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    server = pki.issue(ca, "etcd-server", server=True, client=True,
                       sans=pki.SubjectAltNames(dns_names=("localhost",),
                                                ip_addresses=(IPv4Address(LOCALHOST),)))
    client = pki.issue(ca, "kubeha-test", client=True)
    server_cert, server_key = write_pair(directory, "etcd-server", server)
    cert_file, key_file = write_pair(directory, "etcd-client", client)
    cluster = EtcdCluster(directory, ca, ca_file, cert_file, key_file,
                          _server_cert=server_cert, _server_key=server_key)
    cluster.members = [EtcdMember(f"etcd{i}", free_port(), free_port()) for i in range(members)]
    try:
        for i in range(members):
            cluster.start(i)
        for i in range(members):
            cluster.wait_ready(i)
        yield cluster
    finally:
        for i in range(len(cluster.members)):  # joined members too
            cluster.stop(i)
