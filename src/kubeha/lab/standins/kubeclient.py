"""A tiny kubeconfig-driven REST client for the node stand-ins (kubelet, cm, scheduler).

Only what the stand-ins use: the current context's cluster and user from a kubeconfig
(x509 client certs, inline ``-data`` or files), and get/list/create/update/merge-patch/delete
returning plain dicts. The official ``kubernetes`` package would cost each stand-in tens of
MB of memory; httpx alone is light.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubeha.errors import KubehaError

# Where each resource the stand-ins touch lives.
_API_PREFIXES = {
    "nodes": "/api/v1",
    "pods": "/api/v1",
    "events": "/api/v1",
    "namespaces": "/api/v1",
    "configmaps": "/api/v1",
    "leases": "/apis/coordination.k8s.io/v1",
    "daemonsets": "/apis/apps/v1",
}

Object = dict[str, Any]


class ApiError(KubehaError):
    """A request failed: ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        what = f"{status} {reason}" if status else reason
        super().__init__(f"{what}: {message}" if message else what)
        self.status = status
        self.reason = reason


def _read_bytes(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    """The PEM of ``<key>-data`` (base64) or of the file named by ``<key>`` (relative to ``base``)."""
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / entry[key]).read_bytes()
    return None


def _named(items: list[dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item[kind]
    raise KubehaError(f"kubeconfig has no {kind} named {name!r}")


def tls_context(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    """The server URL of the current context and an SSL context trusting its CA with its client cert."""
    try:
        return _tls_context(kubeconfig)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        raise KubehaError(f"cannot use the kubeconfig {kubeconfig}: {e!r}") from e


def _tls_context(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    base = kubeconfig.parent
    context = _named(config.get("contexts"), config["current-context"], "context")
    cluster = _named(config.get("clusters"), context["cluster"], "cluster")
    user = _named(config.get("users"), context["user"], "user")
    ca = _read_bytes(cluster, "certificate-authority", base)
    tls = ssl.create_default_context(cadata=ca.decode() if ca else None)
    cert, key = _read_bytes(user, "client-certificate", base), _read_bytes(user, "client-key", base)
    if cert and key:
        # ssl loads a cert chain from files only: keep them (in a 0700 dir) just long enough
        with tempfile.TemporaryDirectory() as scratch:
            cert_file, key_file = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
            cert_file.write_bytes(cert)
            key_file.write_bytes(key)
            tls.load_cert_chain(cert_file, key_file)
    return cluster["server"], tls


def condition(obj: Object, kind: str) -> Object | None:
    """The status condition of type ``kind`` of a Node or Pod, if it has one."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), None)


class KubeClient:
    """REST access to one apiserver, configured once from a kubeconfig."""

    def __init__(self, kubeconfig: str | os.PathLike[str]) -> None:
        server, tls = tls_context(Path(kubeconfig))
        self.server = server
        self._http = httpx.Client(base_url=server, verify=tls,
                                  timeout=httpx.Timeout(5.0, connect=2.0))

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Object:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiError(0, type(e).__name__, str(e) or self.server) from e
        if response.is_success:
            return response.json()
        try:
            status = response.json()
        except ValueError:
            status = {}
        raise ApiError(response.status_code, status.get("reason") or response.reason_phrase,
                       status.get("message", ""))

    @staticmethod
    def path(resource: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        parts = [_API_PREFIXES[resource]]
        if namespace:
            parts.append(f"namespaces/{namespace}")
        parts += [resource, name or "", subresource or ""]
        return "/".join(p for p in parts if p)

    def get(self, resource: str, name: str, namespace: str | None = None) -> Object:
        return self._request("GET", self.path(resource, namespace, name))

    def list(self, resource: str, namespace: str | None = None,
             field_selector: str | None = None) -> list[Object]:
        params = {"fieldSelector": field_selector} if field_selector else None
        return self._request("GET", self.path(resource, namespace), params=params).get("items") or []

    def create(self, resource: str, body: Object, namespace: str | None = None) -> Object:
        return self._request("POST", self.path(resource, namespace), json=body)

    def update(self, resource: str, body: Object, subresource: str | None = None) -> Object:
        """PUT ``body``; its metadata.resourceVersion makes a stale write fail with 409."""
        meta = body["metadata"]
        return self._request("PUT", self.path(resource, meta.get("namespace"), meta["name"], subresource),
                             json=body)

    def patch(self, resource: str, name: str, patch: Object, namespace: str | None = None,
              subresource: str | None = None) -> Object:
        """A JSON merge patch (RFC 7386)."""
        return self._request("PATCH", self.path(resource, namespace, name, subresource), json=patch,
                             headers={"Content-Type": "application/merge-patch+json"})

    def delete(self, resource: str, name: str, namespace: str | None = None) -> Object:
        return self._request("DELETE", self.path(resource, namespace, name))


def connect(kubeconfig: str, log: logging.Logger) -> KubeClient | None:
    """A client for ``kubeconfig``, or None after logging why there is none."""
    try:
        return KubeClient(kubeconfig)
    except KubehaError as e:
        log.error("%s", e)
        return None
