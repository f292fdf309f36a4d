"""Certificates issued by kubeha.pki, verified by openssl."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

import pytest

from kubeha.errors import InputError
from kubeha.model import Cluster, Host, Layout, Role, VirtualIP
from kubeha.pki import KeyAndCert, SubjectAltNames, issue, new_ca, reissue, sans_of
from kubeha.pki.cluster import (
    CERT_MODE, KEY_MODE, ClusterAuthorities, apiserver_files, apiserver_sans, ca_files, etcd_member_files,
)


def openssl(*args: str, input: bytes | None = None) -> str:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True).stdout.decode()


def cluster(layout: Layout = Layout.KUBEADM) -> Cluster:
    masters = tuple(Host(name=f"m{i}", address=IPv4Address(f"10.0.0.{10 + i}"),
                         roles=frozenset({Role.MASTER, Role.ETCD})) for i in range(1, 4))
    return Cluster(layout=layout, hosts=masters, vip=VirtualIP(address=IPv4Address("10.0.0.100")))


def test_issued_cert_verifies_against_its_ca_with_openssl(tmp_path):
    ca = new_ca("kubernetes")
    leaf = issue(ca, "kube-apiserver", sans=SubjectAltNames(("kubernetes",), (IPv4Address("10.0.0.1"),)),
                 server=True)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "leaf.crt").write_bytes(leaf.cert_pem)
    assert "leaf.crt: OK" in openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "leaf.crt"))
    text = openssl("x509", "-noout", "-text", input=leaf.cert_pem)
    assert "DNS:kubernetes" in text and "IP Address:10.0.0.1" in text and "TLS Web Server Authentication" in text
    # the key matches the certificate
    assert openssl("pkey", "-pubout", input=leaf.key_pem) == openssl("x509", "-noout", "-pubkey", input=leaf.cert_pem)


def test_reissue_keeps_subject_and_sans_and_changes_only_what_is_asked():
    ca = new_ca("kubernetes")
    old = issue(ca, "kube-apiserver", organizations=("x",),
                sans=SubjectAltNames(("kubernetes",), (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.100"))),
                server=True, client=True)
    new = reissue(ca, old, add=SubjectAltNames((), (IPv4Address("10.0.0.200"),)),
                  remove=SubjectAltNames((), (IPv4Address("10.0.0.100"),)))
    assert new.subject == old.subject
    assert sans_of(new.cert_pem) == SubjectAltNames(("kubernetes",), (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.200")))
    assert new.key_pem != old.key_pem
    # for the same key (as `kubeadm certs renew`): only the cert file changes, the pair always matches
    renewed = reissue(ca, old, add=SubjectAltNames((), (IPv4Address("10.0.0.200"),)), same_key=True)
    assert renewed.key_pem == old.key_pem and renewed.matches and renewed.cert_pem != old.cert_pem
    assert not KeyAndCert(key_pem=new.key_pem, cert_pem=old.cert_pem).matches


def test_a_cert_for_nothing_is_refused():
    with pytest.raises(InputError):
        issue(new_ca("ca"), "nobody")


def test_keys_never_show_in_reprs():
    auth = ClusterAuthorities.create(Layout.KUBEADM)
    assert "PRIVATE" not in repr(auth) and "PRIVATE" not in repr(auth.ca)


@pytest.mark.parametrize("layout", list(Layout))
def test_master_pki_files_have_the_right_names_modes_and_sans(layout):
    c = cluster(layout)
    auth = ClusterAuthorities.create(layout)
    host = c.masters[0]
    files = {**ca_files(c, auth, with_keys=True), **etcd_member_files(c, host, auth), **apiserver_files(c, host, auth)}
    for path, (content, mode) in files.items():
        assert mode == (KEY_MODE if b"PRIVATE KEY" in content else CERT_MODE), path
    sans = sans_of(files[c.paths.apiserver.cert][0])
    for address in ("10.0.0.100", "10.0.0.11", "10.96.0.1", "127.0.0.1", "kubernetes.default.svc.cluster.local"):
        assert sans.covers(address), address
    assert sans == apiserver_sans(c, host)
    etcd_sans = sans_of(files[c.paths.etcd_server.cert][0])
    assert etcd_sans.covers("10.0.0.11") and etcd_sans.covers("127.0.0.1")
    if layout is Layout.KUBEASZ:
        assert auth.etcd_ca is auth.ca and c.paths.etcd_peer == c.paths.etcd_server
