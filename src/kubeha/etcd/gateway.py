"""An etcd v3 client speaking etcd's JSON gRPC gateway over HTTPS with client certs.

The gateway (``POST /v3/kv/range`` and friends) takes and returns JSON: keys and values
base64, 64-bit integers as strings, zero values left out. Requests go to the first
endpoint that answers: a connection error, a timeout or an "unavailable" answer moves on
to the next endpoint, and the one that answered is tried first next time. Reads are
linearizable (the gateway's default).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from kubeha.errors import KubehaError

_GRPC_UNAVAILABLE = 14


class EtcdError(KubehaError):
    """etcd could not be reached or refused a request."""


class _EndpointUnavailable(Exception):
    """This endpoint did not answer usefully; another one may."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass(frozen=True)
class EtcdAlarm:
    member_id: int
    alarm: str  # NOSPACE, CORRUPT


@dataclass(frozen=True)
class EtcdMember:
    id: int
    name: str  # empty while a member is added but not started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True)
class EtcdStatus:
    endpoint: str
    member_id: int
    leader: int  # 0 when the member knows no leader
    raft_index: int
    raft_term: int
    db_size: int
    version: str
    is_learner: bool

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.member_id


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(obj: dict[str, Any], *names: str) -> int:
    """An integer field the gateway sends as a string (or leaves out when zero).

    Several names because the gateway spells some fields in camelCase and others not.
    """
    for name in names:
        if name in obj:
            return int(obj[name])
    return 0


def _key_value(obj: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(obj.get("key")).decode("utf-8", "surrogateescape"),
        value=_unb64(obj.get("value")),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        version=_int(obj, "version"),
    )


def _key_values(range_response: dict[str, Any]) -> list[KeyValue]:
    return [_key_value(kv) for kv in range_response.get("kvs", [])]


def _revision(response: dict[str, Any]) -> int:
    return _int(response.get("header", {}), "revision")


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcd's rule)."""
    raw = bytearray(prefix.encode("utf-8", "surrogateescape") if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def _tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise EtcdError(
            f"cannot load the etcd client TLS files (ca {ca_file}, cert {cert_file}, "
            f"key {key_file}): {e}"
        ) from e
    return context


class EtcdClient:
    """A synchronous etcd client over one keep-alive HTTPS connection pool; thread-safe."""

    def __init__(
        self,
        endpoints: Sequence[str],
        ca_file: str,
        cert_file: str,
        key_file: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        wrap_transport: Callable[[httpx.BaseTransport], httpx.BaseTransport] | None = None,
    ) -> None:
        """``wrap_transport`` wraps the mTLS transport, e.g. to route requests through SSH tunnels."""
        if not endpoints:
            raise EtcdError("no etcd endpoints given")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self._preferred = 0  # index of the endpoint that answered last
        transport: httpx.BaseTransport = httpx.HTTPTransport(
            verify=_tls_context(str(ca_file), str(cert_file), str(key_file)))
        self._http = httpx.Client(
            transport=wrap_transport(transport) if wrap_transport else transport,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------

    def _post_to(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(endpoint + path, json=body)
        except httpx.TransportError as e:
            raise _EndpointUnavailable(f"{endpoint}: {str(e) or type(e).__name__}") from e
        try:
            answer = response.json()
        except ValueError as e:
            raise EtcdError(
                f"etcd at {endpoint} answered {path} with HTTP {response.status_code} "
                f"and no JSON: {response.text[:200]!r}"
            ) from e
        if response.status_code == 200:
            return answer
        message = answer.get("message") or answer.get("error") or response.text[:200]
        if answer.get("code") == _GRPC_UNAVAILABLE or response.status_code == 503:
            raise _EndpointUnavailable(f"{endpoint}: {message}")
        raise EtcdError(f"etcd at {endpoint} refused {path}: {message}")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        failures = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._preferred + step) % count
            try:
                answer = self._post_to(self.endpoints[index], path, body)
            except _EndpointUnavailable as e:
                failures.append(str(e))
                continue
            self._preferred = index
            return answer
        raise EtcdError(f"no etcd endpoint answered {path}: {'; '.join(failures)}")

    # --- key-value -------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = _key_values(self._post("/v3/kv/range", {"key": _b64(key)}))
        return kvs[0] if kvs else None

    def range_prefix(self, prefix: str, limit: int = 0) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` (at most ``limit`` if > 0), sorted by key,
        and the store revision they were read at."""
        answer = self._post(
            "/v3/kv/range",
            {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)), "limit": limit},
        )
        return _key_values(answer), _revision(answer)

    def put(self, key: str, value: bytes) -> int:
        """Write ``key``; return the new store revision (the key's mod_revision)."""
        return _revision(self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}))

    def _txn(
        self, compare: dict[str, Any], success: list[dict[str, Any]], key: str
    ) -> tuple[bool, list[dict[str, Any]], int]:
        """One compare; on failure read ``key``. Returns (succeeded, responses, revision)."""
        answer = self._post(
            "/v3/kv/txn",
            {
                "compare": [{"key": _b64(key), "result": "EQUAL", **compare}],
                "success": success,
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        return bool(answer.get("succeeded")), answer.get("responses", []), _revision(answer)

    def create(self, key: str, value: bytes) -> bool:
        """Write ``key`` only if it does not exist; False if it does."""
        ok, _, _ = self._txn(
            {"target": "CREATE", "create_revision": "0"},
            [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            key,
        )
        return ok

    def update_if(
        self, key: str, value: bytes, mod_revision: int
    ) -> tuple[bool, KeyValue | None, int]:
        """Write ``key`` only if its mod_revision is still ``mod_revision``.

        Returns (written, the key as it is now or None if absent, store revision).
        """
        ok, responses, revision = self._txn(
            {"target": "MOD", "mod_revision": str(mod_revision)},
            [
                {"request_put": {"key": _b64(key), "value": _b64(value)}},
                {"request_range": {"key": _b64(key)}},  # sees the put: same transaction
            ],
            key,
        )
        kvs = _key_values(responses[-1].get("response_range", {})) if responses else []
        return ok, (kvs[0] if kvs else None), revision

    def delete(self, key: str, mod_revision: int | None = None) -> KeyValue | None:
        """Delete ``key`` (only at ``mod_revision`` if given); return what was deleted,
        or None if the key was absent or had changed."""
        request = {"key": _b64(key), "prev_kv": True}
        if mod_revision is None:
            deleted = self._post("/v3/kv/deleterange", request).get("prev_kvs", [])
        else:
            ok, responses, _ = self._txn(
                {"target": "MOD", "mod_revision": str(mod_revision)},
                [{"request_delete_range": request}],
                key,
            )
            deleted = responses[0].get("response_delete_range", {}).get("prev_kvs", []) if ok else []
        return _key_value(deleted[0]) if deleted else None

    # --- cluster ---------------------------------------------------------------------

    def status(self, endpoint: str) -> EtcdStatus:
        """The status of the member serving ``endpoint`` (asked there, no failover)."""
        endpoint = endpoint.rstrip("/")
        try:
            answer = self._post_to(endpoint, "/v3/maintenance/status", {})
        except _EndpointUnavailable as e:
            raise EtcdError(f"etcd status: {e}") from e
        return EtcdStatus(
            endpoint=endpoint,
            member_id=_int(answer.get("header", {}), "member_id"),
            leader=_int(answer, "leader"),
            raft_index=_int(answer, "raftIndex", "raft_index"),
            raft_term=_int(answer, "raftTerm", "raft_term"),
            db_size=_int(answer, "dbSize", "db_size"),
            version=answer.get("version", ""),
            is_learner=bool(answer.get("isLearner", answer.get("is_learner", False))),
        )

    def alarms(self) -> tuple[EtcdAlarm, ...]:
        """The cluster's active alarms (NOSPACE, CORRUPT); none when healthy."""
        answer = self._post("/v3/maintenance/alarm", {"action": "GET"})
        return tuple(EtcdAlarm(member_id=_int(a, "memberID", "member_id"), alarm=str(a.get("alarm", "NONE")))
                     for a in answer.get("alarms", []) if a.get("alarm", "NONE") != "NONE")

    def member_list(self) -> list[EtcdMember]:
        answer = self._post("/v3/cluster/member/list", {})
        return [
            EtcdMember(
                id=_int(m, "ID", "id"),
                name=m.get("name", ""),
                peer_urls=tuple(m.get("peerURLs", m.get("peer_urls", ()))),
                client_urls=tuple(m.get("clientURLs", m.get("client_urls", ()))),
                is_learner=bool(m.get("isLearner", m.get("is_learner", False))),
            )
            for m in answer.get("members", [])
        ]
