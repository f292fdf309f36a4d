"""The kube client against a local HTTPS server that cuts connections under requests."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address

import pytest

from kubeha.kube.client import KubeError, api_client, server_version
from kubeha.pki import SubjectAltNames, issue, new_ca

LOCAL = "127.0.0.1"
VERSION = json.dumps({"major": "1", "minor": "30", "gitVersion": "v1.30.4", "gitCommit": "a" * 40,
                      "gitTreeState": "clean", "buildDate": "2024-08-14T19:00:00Z", "goVersion": "go1.22.5",
                      "compiler": "gc", "platform": "linux/amd64"}).encode()


@pytest.fixture
def apiserver(tmp_path) -> Iterator[tuple[str, list[str], list[bool]]]:
    """An HTTPS server answering /version; each request first takes the next entry of ``cuts``
    (True: close the connection without an answer). Yields (url, requests seen, cuts) and
    leaves the client's credentials in tmp_path."""
    ca = new_ca("test-ca")
    server = issue(ca, "apiserver", sans=SubjectAltNames(ip_addresses=(IPv4Address(LOCAL),)), server=True)
    client = issue(ca, "kubeha", client=True)
    for name, data in (("ca.crt", ca.cert_pem), ("s.crt", server.cert_pem), ("s.key", server.key_pem),
                       ("c.crt", client.cert_pem), ("c.key", client.key_pem)):
        (tmp_path / name).write_bytes(data)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    seen: list[str] = []
    cuts: list[bool] = []

    class Apiserver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.path)
            if cuts and cuts.pop(0):
                self.close_connection = True
                return
            body = VERSION
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((LOCAL, 0), Apiserver)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://{LOCAL}:{httpd.server_address[1]}", seen, cuts
    httpd.shutdown()
    httpd.server_close()


def _api(tmp_path, url: str):
    return api_client(url, str(tmp_path / "ca.crt"), str(tmp_path / "c.crt"), str(tmp_path / "c.key"))


def test_a_request_cut_under_it_is_sent_once_more(tmp_path, apiserver):
    url, seen, cuts = apiserver
    cuts.extend([True])
    assert server_version(_api(tmp_path, url), timeout=5) == "v1.30.4"
    assert seen == ["/version/", "/version/"]


def test_a_request_cut_twice_is_one_line_error(tmp_path, apiserver):
    url, seen, cuts = apiserver
    cuts.extend([True, True, True])
    with pytest.raises(KubeError, match=r"^cannot reach the API at https://127\.0\.0\.1:\d+ for its version: ") as e:
        server_version(_api(tmp_path, url), timeout=5)
    assert "\n" not in str(e.value)
    assert len(seen) == 2

