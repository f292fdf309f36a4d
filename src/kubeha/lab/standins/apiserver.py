"""kube-apiserver stand-in for the lab: HTTPS, x509 client-cert auth, objects in etcd.

Serves what kubectl, the official Python client and the lab's node stand-ins use:
discovery, health, and get/list/create/update/patch/delete of a few core, coordination
and apps resources, stored as JSON under the real etcd key names. Every authenticated user
may do everything; anonymous requests may only read health and version. There is no
watch (405): nothing kubeha runs needs one.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubeha.etcd.gateway import EtcdClient, EtcdError, EtcdUnanswered
from kubeha.lab.standins.common import kube_time, parse_time, start_standin

log = logging.getLogger("kube-apiserver")  # configured by start_standin

VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-kubeha-lab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
READY_CACHE_SECONDS = 0.2
READ_RETRY_PAUSES = (0.1, 0.3)  # seconds before a read is tried again
Obj = dict[str, Any]

# --- flags -----------------------------------------------------------------------------

FLAG_DEFAULTS = {
    "advertise-address": "",
    "bind-address": "0.0.0.0",
    "secure-port": "6443",
    "tls-cert-file": "",
    "tls-private-key-file": "",
    "client-ca-file": "",
    "etcd-servers": "",
    "etcd-cafile": "",
    "etcd-certfile": "",
    "etcd-keyfile": "",
    "etcd-prefix": "/registry",
}
REQUIRED_FLAGS = ("tls-cert-file", "tls-private-key-file", "client-ca-file", "etcd-servers")


# --- resources -------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    storage: str  # directory under the etcd prefix
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = (
    Resource("", "v1", "nodes", "node", "Node", False, "minions", ("no",), ("status",)),
    Resource("", "v1", "pods", "pod", "Pod", True, "pods", ("po",), ("status", "eviction")),
    Resource("", "v1", "configmaps", "configmap", "ConfigMap", True, "configmaps", ("cm",)),
    Resource("", "v1", "namespaces", "namespace", "Namespace", False, "namespaces", ("ns",),
             ("status",)),
    Resource("", "v1", "events", "event", "Event", True, "events", ("ev",)),
    Resource("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, "leases"),
    Resource("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, "daemonsets", ("ds",),
             ("status",)),
    Resource("", "v1", "endpoints", "endpoints", "Endpoints", True, "services/endpoints", ("ep",)),
)
NAMESPACES = RESOURCES[3]
GROUP_VERSIONS = tuple(dict.fromkeys(r.group_version for r in RESOURCES))
VERBS = ["create", "delete", "get", "list", "patch", "update"]
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "eviction": ["create"]}


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    for r in RESOURCES:
        if (r.group, r.version, r.plural) == (group, version, plural):
            return r
    return None


# --- errors ----------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None):
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                 "status": "Success" if code < 400 else "Failure"}
    optional = {"message": message, "reason": reason, "details": details}
    body.update((k, v) for k, v in optional.items() if v)
    body["code"] = code
    return body


def _about(resource: Resource, name: str) -> Obj:
    return {"name": name, "group": resource.group, "kind": resource.plural}


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.plural} "{name}" not found',
                    _about(resource, name))


def conflict(resource: Resource, name: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _about(resource, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


# --- selectors -------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on the commas outside parentheses."""
    return [p for p in re.split(r",(?![^()]*\))", selector) if p.strip()]


def _label_requirement(text: str) -> Callable[[dict[str, str]], bool]:
    match = _SET_REQUIREMENT.match(text)
    if match:
        key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        key, found, value = text.partition(op)
        if found:
            key, value = key.strip(), value.strip()
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    text = text.strip()
    if text.startswith("!"):
        return lambda labels: text[1:] not in labels
    return lambda labels: text in labels


def _field_requirement(text: str) -> Callable[[Obj], bool]:
    for op in ("!=", "==", "="):
        path, found, value = text.partition(op)
        if found:
            keys = path.strip().split(".")
            wanted = value.strip()

            def field(obj: Obj) -> str:
                for key in keys:
                    obj = obj.get(key) if isinstance(obj, dict) else None
                return "" if obj is None else str(obj)

            if op == "!=":
                return lambda obj: field(obj) != wanted
            return lambda obj: field(obj) == wanted
    raise bad_request(f'invalid field selector "{text}": expected key=value or key!=value')


def selector_filter(label_selector: str, field_selector: str) -> Callable[[Obj], bool]:
    labels = [_label_requirement(p) for p in _split_selector(label_selector)]
    fields = [_field_requirement(p) for p in _split_selector(field_selector)]

    def matches(obj: Obj) -> bool:
        obj_labels = obj.get("metadata", {}).get("labels") or {}
        return all(r(obj_labels) for r in labels) and all(r(obj) for r in fields)

    return matches


# --- patches ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. Strategic-merge directives (``$patch``, ``$setElementOrder/..``) are
    dropped, so a strategic merge patch acts as a merge patch whose lists replace."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _container(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        try:
            doc = doc[int(token)] if isinstance(doc, list) else doc[token]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"json patch: path /{'/'.join(tokens)} not found") from e
    return doc


def _index(container: list, token: str, adding: bool) -> int:
    if adding and token == "-":
        return len(container)
    try:
        index = int(token)
    except ValueError:
        index = -1
    if not 0 <= index <= len(container) - (0 if adding else 1):
        raise ApiError(422, "Invalid", f"json patch: index {token} out of range")
    return index


def _json_add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _container(doc, tokens[:-1])
    if isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], adding=True), value)
    else:
        parent[tokens[-1]] = value
    return doc


def _json_remove(doc: Any, tokens: list[str]) -> Any:
    parent = _container(doc, tokens[:-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, tokens[-1], adding=False))
    if tokens[-1] not in parent:
        raise ApiError(422, "Invalid", f"json patch: path /{'/'.join(tokens)} not found")
    return parent.pop(tokens[-1])


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902."""
    if not isinstance(operations, list):
        raise bad_request("a json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        kind, tokens = op.get("op"), _pointer(op.get("path", ""))
        if kind == "add":
            doc = _json_add(doc, tokens, op.get("value"))
        elif kind == "remove":
            _json_remove(doc, tokens)
        elif kind == "replace":
            _json_remove(doc, tokens)
            doc = _json_add(doc, tokens, op.get("value"))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _json_remove(doc, source) if kind == "move" else copy.deepcopy(
                _container(doc, source))
            doc = _json_add(doc, tokens, value)
        elif kind == "test":
            if _container(doc, tokens) != op.get("value"):
                raise ApiError(422, "Invalid", f"json patch: test failed at {op.get('path')}")
        else:
            raise bad_request(f"json patch: unknown operation {kind!r}")
    return doc


PATCHERS = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": merge_patch,
    "application/json-patch+json": json_patch,
}

# --- tables ----------------------------------------------------------------------------


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}
# (below this many seconds, major unit, minor unit shown when not zero)
_AGE_FORMATS = ((120, "s", None), (600, "m", "s"), (3 * 3600, "m", None), (8 * 3600, "h", "m"),
                (48 * 3600, "h", None), (8 * 86400, "d", "h"), (730 * 86400, "d", None),
                (2920 * 86400, "y", "d"), (float("inf"), "y", None))


def human_duration(seconds: float) -> str:
    """Kubernetes' short age format (as in ``kubectl get``): 45s, 5m30s, 3h20m, 2d4h, ..."""
    s = int(max(seconds, 0))
    _, major, minor = next(f for f in _AGE_FORMATS if s < f[0])
    rest = s % _UNIT_SECONDS[major] // _UNIT_SECONDS[minor] if minor else 0
    return f"{s // _UNIT_SECONDS[major]}{major}" + (f"{rest}{minor}" if rest else "")


def _age(obj: Obj) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    return human_duration((dt.datetime.now(dt.timezone.utc) - parse_time(created)).total_seconds())


def _node_status(node: Obj) -> str:
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    status = "Ready" if ready else "NotReady"
    return status + (",SchedulingDisabled" if node.get("spec", {}).get("unschedulable") else "")


def _node_roles(node: Obj) -> str:
    labels = node.get("metadata", {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels
                   if k.startswith("node-role.kubernetes.io/") and k != "node-role.kubernetes.io/")
    return ",".join(r for r in roles if r) or "<none>"


def _pod_ready(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers") or statuses)
    return f"{sum(1 for c in statuses if c.get('ready'))}/{total}"


def _pod_status(pod: Obj) -> str:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status", {})
    return status.get("reason") or status.get("phase") or "Pending"


def _pod_restarts(pod: Obj) -> int:
    return sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses") or [])


Column = tuple[str, str, Callable[[Obj], Any]]  # name, type, cell
NAME: Column = ("Name", "string", lambda o: o["metadata"]["name"])
AGE: Column = ("Age", "string", _age)
COLUMNS: dict[str, list[Column]] = {
    "nodes": [NAME, ("Status", "string", _node_status), ("Roles", "string", _node_roles), AGE,
              ("Version", "string",
               lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""))],
    "pods": [NAME, ("Ready", "string", _pod_ready), ("Status", "string", _pod_status),
             ("Restarts", "integer", _pod_restarts), AGE],
    "configmaps": [NAME, ("Data", "integer",
                          lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
                   AGE],
    "namespaces": [NAME, ("Status", "string",
                          lambda o: o.get("status", {}).get("phase", "Active")), AGE],
    "leases": [NAME, ("Holder", "string",
                      lambda o: o.get("spec", {}).get("holderIdentity", "")), AGE],
}


def table(resource: Resource, objects: list[Obj], resource_version: str, include: str) -> Obj:
    columns = COLUMNS.get(resource.plural, [NAME, AGE])
    rows = []
    for obj in objects:
        row: Obj = {"cells": [cell(obj) for _, _, cell in columns]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":  # Metadata, the default
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}
        rows.append(row)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": name, "type": kind, "format": "name" if name == "Name" else "",
             "description": name, "priority": 0}
            for name, kind, _ in columns
        ],
        "rows": rows,
    }


# --- discovery -------------------------------------------------------------------------


def api_resource_list(group_version: str) -> Obj:
    resources = []
    for r in RESOURCES:
        if r.group_version != group_version:
            continue
        resources.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": VERBS, "shortNames": list(r.short_names)})
        for sub in r.subresources:
            kind = "Eviction" if sub == "eviction" else r.kind
            group = {"group": "policy", "version": "v1"} if sub == "eviction" else {}
            resources.append({"name": f"{r.plural}/{sub}", "singularName": "",
                              "namespaced": r.namespaced, "kind": kind,
                              "verbs": SUBRESOURCE_VERBS[sub], **group})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def api_group_list() -> Obj:
    groups = []
    for gv in GROUP_VERSIONS:
        if "/" in gv:
            version = {"groupVersion": gv, "version": gv.split("/")[1]}
            groups.append({"name": gv.split("/")[0], "versions": [version],
                           "preferredVersion": version})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def openapi_v3_root() -> Obj:
    return {"paths": {_gv_path(gv): {"serverRelativeURL": f"/openapi/v3/{_gv_path(gv)}"}
                      for gv in GROUP_VERSIONS}}


def openapi_v3_group_version(group_version: str) -> Obj:
    """Only what kubectl looks for: PATCH operations that take ``fieldValidation``, so that
    it leaves validation to the server (which here accepts every field)."""
    paths = {}
    for r in RESOURCES:
        if r.group_version == group_version:
            scope = "/namespaces/{namespace}" if r.namespaced else ""
            paths[f"/{_gv_path(group_version)}{scope}/{r.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version,
                                                    "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query",
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}


def _gv_path(group_version: str) -> str:
    return f"apis/{group_version}" if "/" in group_version else f"api/{group_version}"


# --- the API ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_target(path: str) -> Target | None:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        inner = find_resource(group, version, rest[2])
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    resource = find_resource(group, version, rest[0])
    if resource is None or (resource.namespaced and namespace is None and len(rest) > 1):
        return None
    subresource = rest[2] if len(rest) == 3 else None
    if subresource is not None and subresource not in resource.subresources:
        return None
    return Target(resource, namespace, rest[1] if len(rest) > 1 else None, subresource)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    accept: str
    content_type: str
    body: bytes
    user: str | None  # None: anonymous

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as e:
            raise bad_request(f"the request body is not JSON: {e}") from e


Response = tuple[int, Obj | str]  # JSON object, or plain text


class Api:
    """The API over an etcd store; ``handle`` turns a request into (code, body)."""

    def __init__(self, etcd: EtcdClient, health_etcd: EtcdClient, prefix: str, address: str):
        self.etcd, self.health_etcd = etcd, health_etcd
        self.prefix = prefix.rstrip("/")
        self.address = address
        self.namespaces_ready = threading.Event()
        self._ready_lock = threading.Lock()
        self._ready_at, self._ready_error = 0.0, "not checked yet"  # logs the first success

    # health

    def etcd_error(self) -> str | None:
        """Why a linearizable etcd read fails now (at most READY_CACHE_SECONDS old), or None."""
        with self._ready_lock:
            if time.monotonic() - self._ready_at > READY_CACHE_SECONDS:
                try:
                    self.health_etcd.get(f"{self.prefix}/health")
                    error = None
                except EtcdError as e:
                    error = str(e)
                if (error is None) != (self._ready_error is None):  # log changes, not checks
                    log.log(logging.ERROR if error else logging.INFO, "etcd check: %s",
                            error or "ok")
                self._ready_error, self._ready_at = error, time.monotonic()
            return self._ready_error

    def health(self, name: str, verbose: bool) -> Response:
        checks: list[tuple[str, str | None]] = [("ping", None), ("log", None)]
        if name == "readyz":
            checks.append(("etcd", self.etcd_error()))
            checks.append(("poststarthook/bootstrap-namespaces",
                           None if self.namespaces_ready.is_set() else "not finished"))
        failed = [f"{check}: {error}" for check, error in checks if error]
        if not verbose:
            return (500, f"{name} check failed: {'; '.join(failed)}\n") if failed else (200, "ok")
        lines = [f"[-]{c} failed: {e}" if e else f"[+]{c} ok" for c, e in checks]
        lines.append(f"{name} check {'failed' if failed else 'passed'}")
        return (500 if failed else 200), "\n".join(lines) + "\n"

    def bootstrap_namespaces(self) -> None:
        """Create the system namespaces; retried until etcd answers (other apiservers may
        create them at the same time, which is fine)."""
        while True:
            try:
                for name in SYSTEM_NAMESPACES:
                    self._insert(NAMESPACES, None, {"metadata": {"name": name}})
                self.namespaces_ready.set()
                return
            except EtcdError as e:
                log.error("creating the system namespaces: %s", e)
                time.sleep(1)

    # storage

    def key(self, resource: Resource, namespace: str | None, name: str) -> str:
        parts = [self.prefix, resource.storage, namespace, name]
        return "/".join(p for p in parts if p is not None)

    @staticmethod
    def encode(obj: Obj) -> bytes:
        stored = copy.deepcopy(obj)
        stored.get("metadata", {}).pop("resourceVersion", None)  # etcd's revision is the truth
        return json.dumps(stored, separators=(",", ":")).encode()

    @staticmethod
    def decode(value: bytes, revision: int) -> Obj:
        obj = json.loads(value)
        obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
        return obj

    def _insert(self, resource: Resource, namespace: str | None, body: Obj) -> Obj | None:
        """Create ``body`` as a new object; None if the name is taken."""
        obj = copy.deepcopy(body)
        obj["kind"], obj["apiVersion"] = resource.kind, resource.group_version
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{resource.kind}: metadata.name: Required value")
        if resource.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=kube_time(), generation=1)
        for field in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(field, None)
        if resource is NAMESPACES:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif resource.plural == "pods":
            obj["status"] = {"phase": "Pending"}  # as the real one: status is the kubelet's
        key = self.key(resource, namespace, meta["name"])
        if not self.etcd.create(key, self.encode(obj)):
            return None
        stored = self.etcd.get(key)
        return self.decode(stored.value, stored.mod_revision) if stored else obj

    def read(self, t: Target) -> tuple[Obj, int]:
        kv = self.etcd.get(self.key(t.resource, t.namespace, t.name))
        if kv is None:
            raise not_found(t.resource, t.name)
        return self.decode(kv.value, kv.mod_revision), kv.mod_revision

    # requests

    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        base = "/" + path.strip("/").split("/")[0]
        if base in ("/healthz", "/livez", "/readyz") and path.count("/") == 1:
            return self.health(base[1:], "verbose" in request.query)
        if path == "/version":
            return 200, VERSION
        if request.user is None:
            return 401, status_object(401, "Unauthorized", "Unauthorized")
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}]}
        if path == "/apis":
            return 200, api_group_list()
        if path == "/openapi/v3":
            return 200, openapi_v3_root()
        for gv in GROUP_VERSIONS:
            if path == f"/{_gv_path(gv)}":
                return 200, api_resource_list(gv)
            if path == f"/openapi/v3/{_gv_path(gv)}":
                return 200, openapi_v3_group_version(gv)
        target = parse_target(path)
        if target is None:
            return 404, status_object(404, "NotFound", "the server could not find the "
                                      "requested resource")
        return self.dispatch(request, target)

    def dispatch(self, request: Request, t: Target) -> Response:
        method = request.method
        if t.name is None:
            if method == "GET":
                return self.list(request, t)
            if method == "POST" and (t.namespace is not None or not t.resource.namespaced):
                return self.create(request, t)
        elif t.subresource == "eviction":
            if method == "POST":
                self.delete(request, t)
                return 201, status_object(201, "", "")
        elif method == "GET":
            obj, revision = self.read(t)
            return 200, self.maybe_table(request, t.resource, [obj], str(revision), obj)
        elif method == "PUT":
            incoming = self.object_body(request, t)
            return 200, self.modify(t, lambda current: incoming)
        elif method == "PATCH":
            return 200, self.patch(request, t)
        elif method == "DELETE" and t.subresource is None:
            return 200, self.delete(request, t)
        raise method_not_allowed(f"{method} is not supported on {request.path}")

    def maybe_table(self, request: Request, resource: Resource, objects: list[Obj],
                    resource_version: str, plain: Obj) -> Obj:
        if "as=Table" not in request.accept:
            return plain
        return table(resource, objects, resource_version,
                     request.query.get("includeObject", "Metadata"))

    def list(self, request: Request, t: Target) -> Response:
        if request.query.get("watch") in ("true", "1"):
            raise method_not_allowed("watch is not supported by the lab apiserver")
        prefix = self.key(t.resource, t.namespace, "")
        kvs, revision = self.etcd.range_prefix(prefix if prefix.endswith("/") else prefix + "/")
        matches = selector_filter(request.query.get("labelSelector", ""),
                                  request.query.get("fieldSelector", ""))
        objects = [o for o in (self.decode(kv.value, kv.mod_revision) for kv in kvs) if matches(o)]
        plain = {"kind": f"{t.resource.kind}List", "apiVersion": t.resource.group_version,
                 "metadata": {"resourceVersion": str(revision)}, "items": objects}
        return 200, self.maybe_table(request, t.resource, objects, str(revision), plain)

    def object_body(self, request: Request, t: Target) -> Obj:
        body = request.json()
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        meta = body.get("metadata") or {}
        if body.get("kind") not in (None, t.resource.kind):
            raise bad_request(f"the body is a {body.get('kind')}, not a {t.resource.kind}")
        if meta.get("namespace") not in (None, "", t.namespace) and t.resource.namespaced:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        if t.name is not None and meta.get("name") not in (None, t.name):
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match "
                              f"the name on the URL ({t.name})")
        return body

    def create(self, request: Request, t: Target) -> Response:
        body = self.object_body(request, t)
        if t.resource.namespaced and self.etcd.get(self.key(NAMESPACES, None, t.namespace)) is None:
            raise not_found(NAMESPACES, t.namespace)
        created = self._insert(t.resource, t.namespace, body)
        if created is None:
            name = body.get("metadata", {}).get("name", "")
            raise ApiError(409, "AlreadyExists", f'{t.resource.plural} "{name}" already exists',
                           _about(t.resource, name))
        return 201, created

    def patch(self, request: Request, t: Target) -> Obj:
        patcher = PATCHERS.get(request.content_type)
        if patcher is None:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the patch type {request.content_type!r} is not supported; use one of "
                           f"{', '.join(PATCHERS)}")
        patch = request.json()
        return self.modify(t, lambda current: patcher(current, patch))

    def modify(self, t: Target, change: Callable[[Obj], Obj]) -> Obj:
        """Read, change, write if unchanged meanwhile; retried on races, like the real one.

        A resourceVersion in the changed object is a precondition (409 when stale).
        """
        for _ in range(10):
            current, revision = self.read(t)
            wanted = change(copy.deepcopy(current))
            asked = (wanted.get("metadata") or {}).get("resourceVersion")
            if asked and asked != str(revision):
                raise conflict(t.resource, t.name)
            updated = self.merge_update(t, current, wanted)
            ok, now, new_revision = self.etcd.update_if(
                self.key(t.resource, t.namespace, t.name), self.encode(updated), revision)
            if ok:
                return self.decode(self.encode(updated), new_revision)
            if now is None:
                raise not_found(t.resource, t.name)
        raise conflict(t.resource, t.name)

    @staticmethod
    def merge_update(t: Target, current: Obj, wanted: Obj) -> Obj:
        """What an update stores: the status subresource changes only status, the main
        resource all but status; identity fields always stay."""
        if t.subresource == "status":
            updated = copy.deepcopy(current)
            updated["status"] = wanted.get("status")
            return updated
        updated = copy.deepcopy(wanted)
        if "status" in t.resource.subresources:
            updated["status"] = current.get("status")
        meta, old = updated.setdefault("metadata", {}), current["metadata"]
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if field in old:
                meta[field] = old[field]
        meta["generation"] = old.get("generation", 1) + (updated.get("spec") != current.get("spec"))
        updated["kind"], updated["apiVersion"] = t.resource.kind, t.resource.group_version
        return updated

    def delete(self, request: Request, t: Target) -> Obj:
        options = request.json() if request.body else {}
        precondition = ((options or {}).get("preconditions") or {}).get("resourceVersion")
        key = self.key(t.resource, t.namespace, t.name)
        deleted = self.etcd.delete(key, int(precondition) if precondition else None)
        if deleted is None:
            if precondition and self.etcd.get(key) is not None:
                raise conflict(t.resource, t.name)
            raise not_found(t.resource, t.name)
        return self.decode(deleted.value, deleted.mod_revision)


# --- HTTP ------------------------------------------------------------------------------


def subject_user(cert: dict[str, Any] | None) -> str | None:
    """The user (CN) of a verified client certificate, None if there is none."""
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "kube-apiserver-lab"
    timeout = 120  # drop idle keep-alive connections
    server: ApiHttpServer

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=url.path,
            query={k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
            accept=self.headers.get("Accept", ""),
            content_type=(self.headers.get("Content-Type") or "").split(";")[0].strip(),
            body=self.rfile.read(length) if length else b"",
            user=subject_user(self.connection.getpeercert()),
        )
        try:
            code, body = self._handle(request)
        except ApiError as e:
            code, body = e.code, status_object(e.code, e.reason, str(e), e.details)
        except EtcdError as e:
            log.error("%s %s: %s", self.command, url.path, e)
            code, body = 503, status_object(503, "ServiceUnavailable", f"etcd: {e}")
        except Exception as e:  # a bug: answer 500, keep serving, say where
            log.exception("%s %s", self.command, url.path)
            code, body = 500, status_object(500, "InternalError", f"{type(e).__name__}: {e}")
        self._send(code, body)

    def _handle(self, request: Request) -> Response:
        """As the real apiserver's etcd client does, a read no endpoint answered is tried
        again after a pause (a member stopping or a connection dropped under it); a write is
        not, since it may have been applied."""
        for pause in READ_RETRY_PAUSES:
            try:
                return self.server.api.handle(request)
            except EtcdUnanswered as e:
                if request.method != "GET":
                    raise
                log.warning("%s %s: %s; trying again in %s s", request.method, request.path, e, pause)
                time.sleep(pause)
        return self.server.api.handle(request)

    def _send(self, code: int, body: Obj | str) -> None:
        if isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(body, separators=(",", ":")).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (small logs); errors are, where they are handled."""


class ApiHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: Api, context: ssl.SSLContext):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.api, self.context = api, context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs on the connection's own thread: a slow client blocks no one
        try:
            # headers and body leave in separate writes: without NODELAY, Nagle waits
            # for the client's delayed ACK (40 ms a request)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(10)
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(tls, client_address)
        except (OSError, ssl.SSLError):
            pass  # the client went away
        finally:
            tls.close()


def server_tls_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(client_ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL  # no cert: anonymous
    context.set_alpn_protocols(["http/1.1"])
    return context


def main(argv: list[str] | None = None) -> int:
    flags, log, stopping = start_standin("kube-apiserver", argv, FLAG_DEFAULTS)
    missing = [f"--{f}" for f in REQUIRED_FLAGS if not flags[f]]
    if missing:
        log.error("missing required flags: %s", " ".join(missing))
        return 2
    port = int(flags["secure-port"])
    try:
        context = server_tls_context(flags["tls-cert-file"], flags["tls-private-key-file"],
                                     flags["client-ca-file"])
        servers = flags["etcd-servers"].split(",")
        etcd_files = (flags["etcd-cafile"], flags["etcd-certfile"], flags["etcd-keyfile"])
        etcd = EtcdClient(servers, *etcd_files, timeout=5.0)
        health_etcd = EtcdClient(servers, *etcd_files, timeout=1.0, connect_timeout=0.5)
        advertise = flags["advertise-address"] or flags["bind-address"]
        api = Api(etcd, health_etcd, flags["etcd-prefix"], f"{advertise}:{port}")
        server = ApiHttpServer((flags["bind-address"], port), api, context)
    except (OSError, ssl.SSLError, EtcdError) as e:
        log.error("cannot start: %s", e)
        return 1
    threading.Thread(target=api.bootstrap_namespaces, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("serving on https://%s:%d, etcd %s", flags["bind-address"], port, ",".join(servers))
    stopping.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
