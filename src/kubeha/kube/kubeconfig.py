"""The credentials of a kubeconfig's current context: server, CA, client cert and key.

Each credential is either embedded (``*-data``, base64) or a path to a file on the host the
kubeconfig came from; the caller fetches the paths.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from kubeha.errors import InputError


@dataclass(frozen=True)
class Credential:
    """One PEM credential: its content when embedded, else the path it is kept at."""

    pem: bytes | None = None
    path: str | None = None


@dataclass(frozen=True)
class KubeconfigCredentials:
    cluster_name: str
    server: str
    ca: Credential
    client_cert: Credential
    client_key: Credential


def _named(doc: dict[str, Any], section: str, name: str | None, source: str) -> tuple[str, dict[str, Any]]:
    """The entry ``name`` of a section (the first one when no context names one)."""
    entries = [e for e in doc.get(section) or [] if isinstance(e, dict)]
    for entry in entries:
        if name is None or entry.get("name") == name:
            body = entry.get(section.rstrip("s"))
            if isinstance(body, dict):
                return str(entry.get("name", "")), body
    raise InputError(f"{source}: the kubeconfig has no {section.rstrip('s')} "
                     f"{name or ''}".rstrip() + " to use")


def _credential(body: dict[str, Any], field: str, source: str) -> Credential:
    if data := body.get(f"{field}-data"):
        try:
            return Credential(pem=base64.b64decode(str(data), validate=True))
        except (binascii.Error, ValueError):
            raise InputError(f"{source}: {field}-data in the kubeconfig is not base64") from None
    if path := body.get(field):
        return Credential(path=str(path))
    raise InputError(f"{source}: the kubeconfig has neither {field} nor {field}-data")


def kubeconfig_credentials(text: str, source: str = "kubeconfig") -> KubeconfigCredentials:
    """The current context's server and x509 credentials (the first context without one)."""
    try:
        doc = YAML(typ="safe").load(text)
    except YAMLError:
        raise InputError(f"{source}: the kubeconfig is not valid YAML") from None
    if not isinstance(doc, dict):
        raise InputError(f"{source}: the kubeconfig is not a mapping")
    _, context = _named(doc, "contexts", doc.get("current-context") or None, source)
    cluster_name, cluster = _named(doc, "clusters", context.get("cluster"), source)
    _, user = _named(doc, "users", context.get("user"), source)
    if "server" not in cluster:
        raise InputError(f"{source}: the kubeconfig's cluster {cluster_name} has no server")
    return KubeconfigCredentials(
        cluster_name=cluster_name, server=str(cluster["server"]),
        ca=_credential(cluster, "certificate-authority", source),
        client_cert=_credential(user, "client-certificate", source),
        client_key=_credential(user, "client-key", source),
    )
