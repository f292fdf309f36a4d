"""ClusterAccess's pieces without hosts: URL addresses, the tunnel routing transport (TLS
still verifies the real address, on loopback), the reachability probe, kubeconfig credentials."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address

import httpx
import pytest

from kubeha.access import ClusterAccess, TunnelRoutes, reachable, url_address
from kubeha.errors import InputError
from kubeha.inventory import Inventory
from kubeha.kube import kubeconfig_credentials
from kubeha.model import Cluster, Host, Role
from kubeha.pki import KeyAndCert, SubjectAltNames, issue, new_ca
from kubeha.render import render_kubeconfig

REAL = "10.9.9.9"  # the address a client asks for; the server answers on loopback


@pytest.mark.parametrize("url, expected", [
    ("https://10.0.0.1:6443", ("10.0.0.1", 6443)), ("https://vip.example/", ("vip.example", 443)),
    (" https://10.0.0.2:2379/v3 ", ("10.0.0.2", 2379))])
def test_url_address(url, expected):
    assert url_address(url) == expected


def test_url_address_refuses_what_is_no_url():
    with pytest.raises(InputError, match="not a URL"):
        url_address("10.0.0.1")


def test_tunnel_routes_rewrite_only_routed_addresses_and_name_the_real_host():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    transport = TunnelRoutes(httpx.MockTransport(answer), {(REAL, 2379): 40001})
    with httpx.Client(transport=transport) as client:
        client.get(f"https://{REAL}:2379/health")
        client.get("https://10.9.9.10:2379/health")
    routed, direct = seen
    assert (routed.url.host, routed.url.port) == ("127.0.0.1", 40001)
    assert routed.extensions["sni_hostname"] == REAL and routed.headers["host"] == f"{REAL}:2379"
    assert direct.url.host == "10.9.9.10" and "sni_hostname" not in direct.extensions


@pytest.fixture(scope="module")
def ca() -> KeyAndCert:
    return new_ca("test-ca")


@pytest.fixture
def tls_server(tmp_path, ca) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 whose certificate names only REAL."""
    server_pair = issue(ca, "server", sans=SubjectAltNames(ip_addresses=(IPv4Address(REAL),)), server=True)
    (tmp_path / "s.crt").write_bytes(server_pair.cert_pem)
    (tmp_path / "s.key").write_bytes(server_pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _client(tmp_path, ca_pem: bytes, routes: dict) -> httpx.Client:
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    return httpx.Client(transport=TunnelRoutes(httpx.HTTPTransport(verify=verify), routes))


def test_a_routed_request_verifies_the_certificate_against_the_real_address(tmp_path, ca, tls_server):
    with _client(tmp_path, ca.cert_pem, {(REAL, 443): tls_server}) as client:
        assert client.get(f"https://{REAL}/").status_code == 200
    # the same server asked for by another address: its certificate does not name that one
    with _client(tmp_path, ca.cert_pem, {("10.9.9.8", 443): tls_server}) as client:
        with pytest.raises(httpx.ConnectError, match="(?i)certificate|mismatch"):
            client.get("https://10.9.9.8/")


def test_a_routed_request_refuses_a_server_of_another_ca(tmp_path, tls_server):
    with _client(tmp_path, new_ca("other").cert_pem, {(REAL, 443): tls_server}) as client:
        with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
            client.get(f"https://{REAL}/")


def test_reachable_counts_an_accepted_and_a_refused_connect():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert asyncio.run(reachable(listening.getsockname()))
        closed_port = listening.getsockname()[1]
    assert asyncio.run(reachable(("127.0.0.1", closed_port)))


def test_kubeconfig_credentials_embedded_and_by_path(ca):
    client = issue(ca, "kubernetes-admin", client=True)
    text = render_kubeconfig(cluster_name="prod", server="https://10.0.0.100:8443", ca_pem=ca.cert_pem,
                             client_cert_pem=client.cert_pem, client_key_pem=client.key_pem, user="admin")
    creds = kubeconfig_credentials(text)
    assert (creds.cluster_name, creds.server) == ("prod", "https://10.0.0.100:8443")
    assert (creds.ca.pem, creds.client_cert.pem, creds.client_key.pem) == (
        ca.cert_pem, client.cert_pem, client.key_pem)
    by_path = text.replace("client-key-data: " + base64.b64encode(client.key_pem).decode(),
                           "client-key: /etc/kubernetes/admin.key")
    assert kubeconfig_credentials(by_path).client_key.path == "/etc/kubernetes/admin.key"


def test_kubeconfig_without_a_user_is_a_one_line_error():
    text = "clusters: [{name: c, cluster: {server: 'https://x:6443'}}]\ncontexts: []\nusers: []\n"
    with pytest.raises(InputError, match="no context") as e:
        kubeconfig_credentials(text, "m1:/etc/kubernetes/admin.conf")
    assert "\n" not in str(e.value)


def test_unopened_access_says_so():
    cluster = Cluster(hosts=(Host(name="m1", address="10.0.0.1", roles={Role.MASTER}),))
    with pytest.raises(RuntimeError, match="not open"):
        ClusterAccess(Inventory(cluster=cluster)).get_file("m1", "/etc/hosts")


def test_secret_files_are_readable_only_here_and_gone_on_close(tmp_path):
    from kubeha.access import SecretFiles

    secrets = SecretFiles()
    path = secrets.add("client.key", b"-----BEGIN PRIVATE KEY-----\n")
    assert path.startswith("/proc/self/fd/")  # memory, not a file left on disk by a killed run
    assert open(path, "rb").read() == b"-----BEGIN PRIVATE KEY-----\n"
    assert open(path, "rb").read() == b"-----BEGIN PRIVATE KEY-----\n"  # each open reads from the start
    secrets.close()
    assert not (os.path.exists(path) and "kubeha-" in os.readlink(path))  # gone (its number free for reuse)
