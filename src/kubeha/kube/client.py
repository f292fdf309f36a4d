"""The official ``kubernetes`` client, built for one server with x509 client credentials."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address
from typing import Any

import urllib3
from kubernetes import client as k8s

from kubeha.errors import KubehaError

# Node labels that mark a control-plane node (the second one: before Kubernetes 1.24).
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
_VERSION = re.compile(r"^v\d+\.\d+\.\d+")


class KubeError(KubehaError):
    """The API could not be reached or refused a request."""


def api_client(server: str, ca_file: str, cert_file: str, key_file: str, *,
               tls_server_name: str | None = None) -> k8s.ApiClient:
    """An ApiClient for ``server``; ``tls_server_name`` is the name the server's certificate
    must carry when ``server`` is a tunnel's local end. Verification is never turned off."""
    config = k8s.Configuration(host=server.rstrip("/"))
    config.ssl_ca_cert = ca_file
    config.cert_file = cert_file
    config.key_file = key_file
    config.verify_ssl = True
    config.tls_server_name = tls_server_name
    config.retries = 0  # a dead endpoint is reported, not retried for minutes
    return k8s.ApiClient(config)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    internal_ip: IPv4Address | None
    control_plane: bool


def _cut_under_request(error: Exception) -> bool:
    """Whether the connection was closed under a sent request: what an apiserver that stops,
    or haproxy cutting the sessions of a server it marks down, does to a request in flight."""
    reason = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
    return isinstance(reason, urllib3.exceptions.ProtocolError)


def _call(api: k8s.ApiClient, what: str, request: Callable[..., Any], timeout: float, *,
          absent_ok: bool = False) -> Any:
    """``request``'s answer, errors said in one KubeError line; None for a 404 if ``absent_ok``.

    A request whose connection is cut under it is sent once more, on a new connection (through
    a load balancer: to another apiserver). That is safe because every request kubeha makes is
    idempotent: reads, patches to a fixed value, deletes that accept a 404."""
    try:
        try:
            return request(_request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if not _cut_under_request(e):
                raise
            return request(_request_timeout=timeout)
    except k8s.ApiException as e:
        if absent_ok and e.status == 404:
            return None
        raise KubeError(f"the API at {api.configuration.host} refused {what}: "
                        f"HTTP {e.status} {e.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        reason = type(e).__name__ if not str(e) else str(e).splitlines()[0][:200]
        raise KubeError(f"cannot reach the API at {api.configuration.host} for {what}: {reason}") from None


def list_nodes(api: k8s.ApiClient, timeout: float = 10.0) -> tuple[NodeInfo, ...]:
    # Raw JSON, not the typed models: they refuse a Node whose status lacks optional-in-practice
    # fields (nodeInfo.bootID, ...), which would make one odd node hide them all.
    response = _call(api, "listing nodes",
                     lambda **kw: k8s.CoreV1Api(api).list_node(_preload_content=False, **kw), timeout)
    try:
        items = json.loads(response.data)["items"]
    except (ValueError, KeyError, TypeError):
        raise KubeError(f"the API at {api.configuration.host} answered the node list with "
                        f"something else than a NodeList") from None
    found = []
    for node in items:
        labels = node["metadata"].get("labels") or {}
        addresses = (node.get("status") or {}).get("addresses") or []
        internal = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), None)
        found.append(NodeInfo(name=node["metadata"]["name"],
                              internal_ip=IPv4Address(internal) if internal else None,
                              control_plane=any(label in labels for label in CONTROL_PLANE_LABELS)))
    return tuple(found)


def server_version(api: k8s.ApiClient, timeout: float = 10.0) -> str:
    """The apiserver's Kubernetes version, vX.Y.Z (a build suffix like +k3s1 dropped)."""
    info = _call(api, "its version", k8s.VersionApi(api).get_code, timeout)
    match = _VERSION.match(info.git_version or "")
    if match is None:
        raise KubeError(f"the API at {api.configuration.host} reports the version "
                        f"{info.git_version!r}, not vX.Y.Z")
    return match.group(0)


def configmap_value(api: k8s.ApiClient, namespace: str, name: str, key: str, timeout: float = 10.0) -> str | None:
    """``data[key]`` of a ConfigMap; None when the ConfigMap or the key is not there."""
    config_map = _call(api, f"reading ConfigMap {namespace}/{name}",
                       lambda **kw: k8s.CoreV1Api(api).read_namespaced_config_map(name, namespace, **kw),
                       timeout, absent_ok=True)
    return None if config_map is None else (config_map.data or {}).get(key)


def set_configmap_value(api: k8s.ApiClient, namespace: str, name: str, key: str, value: str,
                        timeout: float = 10.0) -> None:
    _call(api, f"patching ConfigMap {namespace}/{name}",
          lambda **kw: k8s.CoreV1Api(api).patch_namespaced_config_map(name, namespace, {"data": {key: value}}, **kw),
          timeout)


def restart_daemonset(api: k8s.ApiClient, namespace: str, name: str, at: str, timeout: float = 10.0) -> bool:
    """Roll a DaemonSet's pods as `kubectl rollout restart` does; False when it does not exist."""
    body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}}
    patched = _call(api, f"restarting DaemonSet {namespace}/{name}",
                    lambda **kw: k8s.AppsV1Api(api).patch_namespaced_daemon_set(name, namespace, body, **kw),
                    timeout, absent_ok=True)
    return patched is not None


NODE_LEASE_NAMESPACE = "kube-node-lease"


def _raw_json(api: k8s.ApiClient, what: str, request: Any) -> dict[str, Any] | None:
    response = _call(api, what, lambda **kw: request(_preload_content=False, **kw), 10.0, absent_ok=True)
    return None if response is None else json.loads(response.data)


def node_ready(api: k8s.ApiClient, node: str) -> bool:
    data = _raw_json(api, f"reading Node {node}", lambda **kw: k8s.CoreV1Api(api).read_node(node, **kw))
    conditions = ((data or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def lease_renewed(api: k8s.ApiClient, node: str) -> float | None:
    """When the kubelet last renewed its Lease (seconds since the epoch, on the node's clock)."""
    data = _raw_json(api, f"reading Lease {NODE_LEASE_NAMESPACE}/{node}",
                     lambda **kw: k8s.CoordinationV1Api(api).read_namespaced_lease(node, NODE_LEASE_NAMESPACE, **kw))
    renewed = ((data or {}).get("spec") or {}).get("renewTime")
    if not renewed:
        return None
    return datetime.fromisoformat(str(renewed).replace("Z", "+00:00")).timestamp()


def read_node(api: k8s.ApiClient, node: str) -> dict[str, Any] | None:
    """The Node as JSON, or None when there is none."""
    return _raw_json(api, f"reading Node {node}", lambda **kw: k8s.CoreV1Api(api).read_node(node, **kw))


def patch_node(api: k8s.ApiClient, node: str, body: dict[str, Any], timeout: float = 10.0) -> None:
    """A strategic merge patch of the Node (labels, taints, unschedulable)."""
    _call(api, f"patching Node {node}", lambda **kw: k8s.CoreV1Api(api).patch_node(node, body, **kw), timeout)


def names_an_address(text: str, address: str) -> bool:
    """Whether ``text`` names ``address`` as a whole address (10.0.0.1 is not in 10.0.0.11)."""
    return re.search(rf"(?<![\w.]){re.escape(address)}(?![\w]|\.\d)", text) is not None


def objects_naming(api: k8s.ApiClient, addresses: list[str], timeout: float = 30.0) -> list[str]:
    """The ConfigMaps and Endpoints (where monitoring keeps scrape targets it was given by
    hand) of every namespace that name one of ``addresses``, one line each."""
    core = k8s.CoreV1Api(api)
    found = []
    for kind, request, field in (
            ("ConfigMap", core.list_config_map_for_all_namespaces, "data"),
            ("Endpoints", core.list_endpoints_for_all_namespaces, "subsets")):
        response = _call(api, f"listing {kind} objects", lambda **kw: request(_preload_content=False, **kw), timeout)
        for item in json.loads(response.data).get("items") or []:
            text = json.dumps(item.get(field))
            named = [a for a in addresses if names_an_address(text, a)]
            if named:
                meta = item.get("metadata") or {}
                found.append(f"{kind} {meta.get('namespace')}/{meta.get('name')} names {', '.join(named)}")
    return found


def delete_node(api: k8s.ApiClient, node: str, timeout: float = 10.0) -> None:
    """Delete the Node; one that is gone already is fine."""
    _call(api, f"deleting Node {node}", lambda **kw: k8s.CoreV1Api(api).delete_node(node, **kw), timeout,
          absent_ok=True)
