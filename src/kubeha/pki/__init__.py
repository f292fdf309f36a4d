"""Certificates and keys: a CA, certs issued by it, their SANs.

Pure functions over PEM bytes (the ``cryptography`` library does the work). Keys are
ECDSA P-256: as accepted by Kubernetes and etcd as RSA, and instant to generate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv6Address, ip_address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeha.errors import InputError

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class KeyAndCert:
    """A private key and its certificate, both PEM. The key never goes into logs or reports."""

    key_pem: bytes
    cert_pem: bytes

    def __repr__(self) -> str:  # keep the key out of reprs, tracebacks and logs
        return f"KeyAndCert({self.subject!r})"

    @cached_property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @cached_property
    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return key  # type: ignore[return-value]

    @property
    def matches(self) -> bool:
        """Whether the cert is the key's (a write of the pair cut between its two files is not)."""
        der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return self.cert.public_key().public_bytes(*der) == self.key.public_key().public_bytes(*der)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


@dataclass(frozen=True)
class SubjectAltNames:
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()

    def union(self, other: SubjectAltNames) -> SubjectAltNames:
        return SubjectAltNames(
            dns_names=_unique(self.dns_names + other.dns_names),
            ip_addresses=_unique(self.ip_addresses + other.ip_addresses),
        )

    def without(self, other: SubjectAltNames) -> SubjectAltNames:
        return SubjectAltNames(
            dns_names=tuple(d for d in self.dns_names if d not in other.dns_names),
            ip_addresses=tuple(i for i in self.ip_addresses if i not in other.ip_addresses),
        )

    def covers(self, address: str) -> bool:
        try:
            return ip_address(address) in self.ip_addresses
        except ValueError:
            return address in self.dns_names


def _unique(items: tuple) -> tuple:
    return tuple(dict.fromkeys(items))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_signing_key() -> tuple[bytes, bytes]:
    """A bare key pair (private PEM, public PEM), e.g. the service-account signing key."""
    key = _new_key()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _key_pem(key), public


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _key_usage(*, signs_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=True,
        data_encipherment=False, key_agreement=False, key_cert_sign=signs_certs,
        crl_sign=signs_certs, encipher_only=False, decipher_only=False,
    )


def new_ca(common_name: str, days: int = 3650) -> KeyAndCert:
    key = _new_key()
    name = _name(common_name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyAndCert(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def issue(
    ca: KeyAndCert,
    common_name: str,
    *,
    organizations: tuple[str, ...] = (),
    sans: SubjectAltNames = SubjectAltNames(),
    server: bool = False,
    client: bool = False,
    days: int = 365,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> KeyAndCert:
    """Issue a leaf certificate signed by ``ca`` for ``key`` (default: a new one)."""
    if not (server or client):
        raise InputError(f"certificate {common_name!r} must be for a server, a client or both")
    key = key or _new_key()
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.dns_names]
    names += [x509.IPAddress(i) for i in sans.ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return KeyAndCert(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def sans_of(cert_pem: bytes) -> SubjectAltNames:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    return SubjectAltNames(
        dns_names=tuple(ext.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(ext.get_values_for_type(x509.IPAddress)),
    )


def reissue(ca: KeyAndCert, current: KeyAndCert, *, add: SubjectAltNames = SubjectAltNames(),
            remove: SubjectAltNames = SubjectAltNames(), days: int = 365, same_key: bool = False) -> KeyAndCert:
    """A new cert for the same subject and usages, its SANs changed by ``add`` and ``remove``;
    for ``current``'s key with ``same_key`` (as `kubeadm certs renew`), else a new one."""
    cert = current.cert
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = []
    return issue(
        ca, str(cn), organizations=tuple(str(o) for o in orgs),
        sans=sans_of(current.cert_pem).union(add).without(remove),
        server=ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        days=days,
        key=current.key if same_key else None,
    )
