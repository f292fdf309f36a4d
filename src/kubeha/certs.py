"""Certificates on the hosts: load the cluster's CAs, reissue and install certs, with backups.

The pure work (what a cert contains, where it goes) is in ``kubeha.pki``; this module reads
and writes the files over SSH through ``ClusterAccess``. Keys are written 0600 and every
replaced file is backed up first (``BackupSet``), so a failed step can restore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from kubeha.access import ClusterAccess
from kubeha.errors import KubehaError
from kubeha.hosts import BackupSet
from kubeha.model import CertPair, Host
from kubeha.pki import KeyAndCert, SubjectAltNames, reissue, sans_of
from kubeha.pki.cluster import CERT_MODE, ClusterAuthorities, PkiFiles


class CertError(KubehaError):
    """A certificate or key on a host is missing or unusable."""


def _read(access: ClusterAccess, host: Host, path: PurePosixPath) -> bytes:
    content = access.get_file(host, str(path))
    if content is None:
        raise CertError(f"{host.name}: {path} is missing: is {host.name} a master of this cluster?")
    return content


def read_pair(access: ClusterAccess, host: Host, pair: CertPair) -> KeyAndCert:
    """The key and cert at ``pair`` on ``host``; refuses a key that does not match its cert."""
    kc = KeyAndCert(key_pem=_read(access, host, pair.key), cert_pem=_read(access, host, pair.cert))
    try:
        matches = kc.matches
    except (ValueError, TypeError, AttributeError) as e:
        raise CertError(f"{host.name}: {pair.cert} or {pair.key} is not a PEM certificate/key") from e
    if not matches:
        raise CertError(f"{host.name}: {pair.key} is not the key of {pair.cert}")
    return kc


def load_authorities(access: ClusterAccess, master: Host) -> ClusterAuthorities:
    """The cluster CA, etcd CA and service-account key pair as stored on ``master``."""
    paths = access.cluster.paths
    ca = read_pair(access, master, paths.ca)
    etcd_ca = ca if paths.etcd_ca == paths.ca else read_pair(access, master, paths.etcd_ca)
    service_account = (_read(access, master, paths.service_account_key),
                       _read(access, master, paths.service_account_pub))
    return ClusterAuthorities(ca=ca, etcd_ca=etcd_ca, service_account=service_account)


def install_files(access: ClusterAccess, host: Host, files: PkiFiles, backup: BackupSet) -> None:
    """Write certs and keys on ``host``: atomically, each backed up first, keys 0600."""
    for path, (content, mode) in files.items():
        access.put_file(host, str(path), content, mode=mode, owner="root:root", backup=backup)


@dataclass(frozen=True)
class Reissued:
    host: str
    before: SubjectAltNames
    after: SubjectAltNames


def reissue_apiserver_cert(access: ClusterAccess, host: Host, auth: ClusterAuthorities, *,
                           add: SubjectAltNames = SubjectAltNames(),
                           remove: SubjectAltNames = SubjectAltNames(),
                           backup: BackupSet) -> Reissued:
    """Reissue ``host``'s apiserver cert keeping its subject, key and SANs, plus ``add``, minus
    ``remove``. The running apiserver keeps the old cert until it restarts. Only the cert
    file changes (one atomic write: a run killed mid-step never leaves a cert without its key)."""
    pair = access.cluster.paths.apiserver
    current = read_pair(access, host, pair)
    new = reissue(auth.ca, current, add=add, remove=remove, same_key=True)
    install_files(access, host, {pair.cert: (new.cert_pem, CERT_MODE)}, backup)
    return Reissued(host=host.name, before=sans_of(current.cert_pem), after=sans_of(new.cert_pem))
