"""Kubeconfigs: kubeadm-style rendering, and server rewrites that keep everything else."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from kubernetes.config.kube_config import KubeConfigLoader

from kubeha import pki
from kubeha.errors import InputError
from kubeha.render import kubeconfig_servers, render_kubeconfig, rewrite_kubeconfig_server

ADMIN_CONF = """\
# written by hand: keep me
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://10.77.0.11:6443  # the first master
  name: kubernetes
- cluster:
    insecure-skip-tls-verify: true
    server: "https://10.77.0.12:6443"
  name: other
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
"""


def test_render_kubeconfig_is_what_kubeadm_writes(tmp_path: Path) -> None:
    ca = pki.new_ca("kubernetes")
    admin = pki.issue(ca, "kubernetes-admin", organizations=("system:masters",), client=True)
    text = render_kubeconfig(
        cluster_name="kubernetes",
        server="https://10.77.0.100:8443",
        ca_pem=ca.cert_pem,
        client_cert_pem=admin.cert_pem,
        client_key_pem=admin.key_pem.decode(),  # bytes or str
        user="kubernetes-admin",
    )
    doc = yaml.safe_load(text)
    assert list(doc) == ["apiVersion", "clusters", "contexts", "current-context", "kind", "preferences", "users"]
    assert doc["current-context"] == "kubernetes-admin@kubernetes"
    assert doc["contexts"][0]["context"] == {"cluster": "kubernetes", "user": "kubernetes-admin"}
    user = doc["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == admin.key_pem
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == ca.cert_pem
    assert text.startswith("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: ")

    # the official client reads it and finds host, CA and client credentials
    loader = KubeConfigLoader(config_dict=doc, temp_file_path=str(tmp_path))
    loader.load_and_set(config := type("C", (), {})())
    assert config.host == "https://10.77.0.100:8443"
    assert Path(config.ssl_ca_cert).read_bytes() == ca.cert_pem
    assert Path(config.cert_file).read_bytes() == admin.cert_pem


def test_rewrite_changes_only_the_server_lines() -> None:
    out = rewrite_kubeconfig_server(ADMIN_CONF, "https://10.77.0.100:8443")
    changed = [(a, b) for a, b in zip(ADMIN_CONF.splitlines(), out.splitlines()) if a != b]
    assert changed == [
        ("    server: https://10.77.0.11:6443  # the first master",
         "    server: https://10.77.0.100:8443 # the first master"),  # comment kept, one column on
        ('    server: "https://10.77.0.12:6443"', '    server: "https://10.77.0.100:8443"'),  # quotes kept
    ]
    assert len(out.splitlines()) == len(ADMIN_CONF.splitlines())


def test_rewrite_only_from_leaves_other_servers() -> None:
    out = rewrite_kubeconfig_server(ADMIN_CONF, "https://127.0.0.1:6443", only_from=["https://10.77.0.12:6443"])
    assert kubeconfig_servers(out) == ["https://10.77.0.11:6443", "https://127.0.0.1:6443"]
    assert "# written by hand: keep me" in out and "# the first master" in out
    unchanged = rewrite_kubeconfig_server(ADMIN_CONF, "https://127.0.0.1:6443", only_from=["https://nowhere"])
    assert unchanged == ADMIN_CONF


def test_kubeconfig_servers_in_file_order() -> None:
    assert kubeconfig_servers(ADMIN_CONF) == ["https://10.77.0.11:6443", "https://10.77.0.12:6443"]


@pytest.mark.parametrize("text", ["clusters: [\n", "just text\n", "apiVersion: v1\nkind: Config\n"])
def test_not_a_kubeconfig_is_refused(text: str) -> None:
    with pytest.raises(InputError) as caught:
        kubeconfig_servers(text)
    assert "\n" not in str(caught.value)
