"""Kubeconfig files: new ones with embedded credentials, and server rewrites of existing ones."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

from ruamel.yaml.error import YAMLError

from kubeha.errors import InputError
from kubeha.render._text import dump_yaml, new_yaml


def _b64(pem: bytes | str) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return base64.b64encode(data).decode("ascii")


def render_kubeconfig(
    *,
    cluster_name: str,
    server: str,
    ca_pem: bytes | str,
    client_cert_pem: bytes | str,
    client_key_pem: bytes | str,
    user: str,
) -> str:
    """A kubeconfig as kubeadm writes it: one cluster, one user, one context
    ``<user>@<cluster_name>`` made current, the CA and client credentials embedded as base64.
    """
    context = f"{user}@{cluster_name}"
    return dump_yaml(
        {
            "apiVersion": "v1",
            "clusters": [
                {
                    "cluster": {"certificate-authority-data": _b64(ca_pem), "server": server},
                    "name": cluster_name,
                }
            ],
            "contexts": [{"context": {"cluster": cluster_name, "user": user}, "name": context}],
            "current-context": context,
            "kind": "Config",
            "preferences": {},
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(client_cert_pem),
                        "client-key-data": _b64(client_key_pem),
                    },
                }
            ],
        }
    )


def _load(text: str) -> Any:
    try:
        doc = new_yaml().load(text)
    except YAMLError as e:
        raise InputError(f"the kubeconfig is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("clusters"), list):
        raise InputError("the kubeconfig has no clusters list")
    return doc


def _cluster_entries(doc: Any) -> Iterator[dict[str, Any]]:
    """The ``cluster`` mapping of every entry of ``clusters`` that has a server."""
    for entry in doc["clusters"]:
        cluster = entry.get("cluster") if isinstance(entry, dict) else None
        if isinstance(cluster, dict) and "server" in cluster:
            yield cluster


def kubeconfig_servers(text: str) -> list[str]:
    """``clusters[*].cluster.server`` of a kubeconfig, in file order."""
    return [str(c["server"]) for c in _cluster_entries(_load(text))]


def rewrite_kubeconfig_server(
    text: str, new_server: str, *, only_from: Iterable[str] | None = None
) -> str:
    """The kubeconfig with ``clusters[*].cluster.server`` set to ``new_server``.

    With ``only_from``, only servers equal to one of those change. Every other field,
    comment, quote and the key order stay as they were.
    """
    doc = _load(text)
    sources = None if only_from is None else set(only_from)
    for cluster in _cluster_entries(doc):
        if sources is None or cluster["server"] in sources:
            cluster["server"] = new_server
    return dump_yaml(doc)
