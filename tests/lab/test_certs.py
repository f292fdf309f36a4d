"""Certificates on real hosts: the CA is loaded in either layout, a reissued apiserver cert
keeps its SANs, openssl on the host accepts it, keys stay 0600, the backup restores."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address

import pytest

from kubeha.access import ClusterAccess
from kubeha.certs import load_authorities, reissue_apiserver_cert
from kubeha.hosts import BackupSet
from kubeha.inventory import load_inventory
from kubeha.lab import Lab
from kubeha.pki import SubjectAltNames

pytestmark = pytest.mark.lab


def test_reissue_keeps_sans_is_verified_by_openssl_and_restores(lab: Lab):
    inventory = load_inventory(lab.paths.inventory)
    cluster = inventory.cluster
    master, target = cluster.masters[0], cluster.masters[1]
    pair = cluster.paths.apiserver
    extra = IPv4Address(int(cluster.vip.address) + 100)
    with ClusterAccess(inventory) as access:
        auth = load_authorities(access, master)
        assert auth.ca.cert_pem == lab.paths.ca_cert.read_bytes()
        original = access.get_file(target, str(pair.cert))
        backup = BackupSet(f"test-certs-{cluster.layout.value}")

        result = reissue_apiserver_cert(access, target, auth, add=SubjectAltNames(ip_addresses=(extra,)),
                                        backup=backup)
        assert set(result.after.ip_addresses) == set(result.before.ip_addresses) | {extra}
        assert result.after.dns_names == result.before.dns_names

        text = access.run(target, ["openssl", "x509", "-noout", "-text", "-in", str(pair.cert)],
                          check=True).stdout
        assert f"IP Address:{extra}" in text and f"IP Address:{cluster.vip.address}" in text
        verify = access.run(target, ["openssl", "verify", "-CAfile", str(cluster.paths.ca.cert),
                                     str(pair.cert)], check=True).stdout
        assert verify.strip().endswith("OK")
        assert access.stat(target, str(pair.key)).mode & 0o777 == 0o600

        access.restore(target, backup)
        assert hashlib.sha256(access.get_file(target, str(pair.cert))).digest() == \
            hashlib.sha256(original).digest()
