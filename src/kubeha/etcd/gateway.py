"""An etcd v3 client speaking etcd's JSON gRPC gateway over HTTPS with client certs.

The gateway (``POST /v3/kv/range`` and friends) takes and returns JSON: keys and values
base64, 64-bit integers as strings, zero values left out. Requests go to the first
endpoint that answers: a connection error, a timeout or an "unavailable" answer moves on
to the next endpoint, and the one that answered is tried first next time. Reads are
linearizable (the gateway's default). Requests about one member (status, leadership
transfer) go to that member's endpoint only.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx

from kubeha.etcd.errors import EtcdError, EtcdUnanswered
from kubeha.etcd.snapshot import SnapshotStatus, verify_snapshot

__all__ = ["EtcdError", "EtcdUnanswered", "SnapshotStatus", "verify_snapshot"]  # re-exported: callers import them from here

_GRPC_UNAVAILABLE = 14
# What a member says while it loses or gives up leadership, or stops (a member being moved
# off, removed or restarted): nothing was applied through it; another member can answer.
_TRANSIENT = ("raft proposal dropped", "raft: stopped", "etcdserver: server stopped", "etcdserver: leader changed",
              "etcdserver: no leader")
_KEEPALIVE = "/v3/lease/keepalive"  # a streaming endpoint: one request, answers until closed
_T = TypeVar("_T")


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


@dataclass(frozen=True)
class ClusterHealth:
    members: tuple[EtcdMember, ...]
    leader_id: int  # the leader most answering members agree on; 0 when none knows one
    unhealthy: tuple[str, ...]  # "<member name>: <reason>", one per unhealthy member

    @property
    def healthy(self) -> bool:
        return self.leader_id != 0 and not self.unhealthy


def member_label(member: EtcdMember) -> str:
    """The member's name, or its id in hex (as etcdctl shows it) while it has none."""
    return member.name or f"{member.id:x}"


def initial_cluster(members: Sequence[EtcdMember], new_member_id: int, new_name: str) -> str:
    """The ``--initial-cluster`` value to start the member just added (etcdctl's rule).

    ``members`` is the list :meth:`EtcdClient.member_add` returned; the new member has no
    name yet, so it gets ``new_name``. Another unnamed member (added, never started) would
    make the value invalid, so it is refused.
    """
    pairs = []
    for member in members:
        name = new_name if member.id == new_member_id else member.name
        if not name:
            raise EtcdError(f"etcd member {member.id:x} ({', '.join(member.peer_urls)}) was added "
                            "but never started; start or remove it before adding another")
        pairs += [f"{name}={url}" for url in member.peer_urls]
    return ",".join(pairs)


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


def _member(obj: dict[str, Any]) -> EtcdMember:
    return EtcdMember(
        id=_int(obj, "ID", "id"),
        name=obj.get("name", ""),
        peer_urls=tuple(obj.get("peerURLs", obj.get("peer_urls", ()))),
        client_urls=tuple(obj.get("clientURLs", obj.get("client_urls", ()))),
        is_learner=bool(obj.get("isLearner", obj.get("is_learner", False))),
    )


def _members(response: dict[str, Any]) -> list[EtcdMember]:
    return [_member(m) for m in response.get("members", [])]


def _json_objects(chunks: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a stream of text chunks, newline-separated or back to back."""
    decoder = json.JSONDecoder()
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while True:
            buffer = buffer.lstrip()
            try:
                obj, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # incomplete: wait for the next chunk
            yield obj
            buffer = buffer[end:]
    if buffer.strip():
        raise ValueError(f"truncated JSON at the end of the stream: {buffer[:200]!r}")


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

    @staticmethod
    def _check_answer(endpoint: str, path: str, status_code: int, text: str) -> dict[str, Any]:
        """The JSON of a complete answer; raise on a refusal."""
        try:
            answer = json.loads(text)
        except ValueError as e:
            raise EtcdError(
                f"etcd at {endpoint} answered {path} with HTTP {status_code} "
                f"and no JSON: {text[:200]!r}"
            ) from e
        if status_code == 200:
            return answer
        error = answer.get("error")
        message = answer.get("message") or (error.get("message") if isinstance(error, dict) else error)
        message = " ".join(str(message or text[:200]).split())  # one line
        if answer.get("code") == _GRPC_UNAVAILABLE or status_code == 503 or any(t in message for t in _TRANSIENT):
            raise _EndpointUnavailable(f"{endpoint}: {message}")
        raise EtcdError(f"etcd at {endpoint} refused {path}: {message}")

    def _post_to(self, endpoint: str, path: str, body: dict[str, Any],
                 timeout: float | None = None) -> dict[str, Any]:
        try:
            response = self._http.post(
                endpoint + path, json=body,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        except httpx.TransportError as e:
            raise _EndpointUnavailable(f"{endpoint}: {str(e) or type(e).__name__}") from e
        return self._check_answer(endpoint, path, response.status_code, response.text)

    def _post_at(self, endpoint: str, path: str, body: dict[str, Any],
                 timeout: float | None = None) -> dict[str, Any]:
        """A request only ``endpoint`` can answer (no failover)."""
        try:
            return self._post_to(endpoint.rstrip("/"), path, body, timeout)
        except _EndpointUnavailable as e:
            raise EtcdError(f"etcd {path} unanswered: {e}") from e

    def _first_answer(self, path: str, ask: Callable[[str], _T]) -> _T:
        """``ask(endpoint)`` of the first endpoint that answers, the last one first."""
        failures = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._preferred + step) % count
            try:
                answer = ask(self.endpoints[index])
            except _EndpointUnavailable as e:
                failures.append(str(e))
                continue
            self._preferred = index
            return answer
        raise EtcdUnanswered(f"no etcd endpoint answered {path}: {'; '.join(failures)}")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._first_answer(path, lambda endpoint: self._post_to(endpoint, path, body))

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

    def put_if_absent(self, key: str, value: bytes, lease_id: int) -> tuple[bool, KeyValue | None]:
        """Write ``key`` attached to lease ``lease_id`` only if it does not exist.

        Returns (written, the key as it is now: ours if written, else the one in the way).
        """
        ok, responses, _ = self._txn(
            {"target": "CREATE", "create_revision": "0"},
            [
                {"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease_id)}},
                {"request_range": {"key": _b64(key)}},  # sees the put: same transaction
            ],
            key,
        )
        kvs = _key_values(responses[-1].get("response_range", {})) if responses else []
        return ok, (kvs[0] if kvs else None)

    # --- leases (ids go out as strings: they exceed JSON's safe integers) ------------

    def lease_grant(self, ttl_seconds: int) -> int:
        """A new lease of ``ttl_seconds`` (etcd may raise it to its minimum); its id."""
        answer = self._post("/v3/lease/grant", {"TTL": str(ttl_seconds)})
        lease_id = _int(answer, "ID")
        if not lease_id:
            raise EtcdError(f"etcd granted no lease: {answer.get('error') or answer}")
        return lease_id

    def lease_revoke(self, lease_id: int) -> None:
        """End the lease now, deleting every key attached to it."""
        self._post("/v3/lease/revoke", {"ID": str(lease_id)})

    def lease_keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Renew the lease once; return its TTL from now in seconds, 0 when it has expired."""
        return self._first_answer(_KEEPALIVE, lambda endpoint: self._keepalive_at(endpoint, lease_id, timeout))

    def _keepalive_at(self, endpoint: str, lease_id: int, timeout: float | None) -> int:
        """The TTL in the first answer of the keepalive stream; leaving the ``with`` block
        closes the response, so the stream the gateway would keep open ends here."""
        path = _KEEPALIVE
        try:
            with self._http.stream("POST", endpoint + path, json={"ID": str(lease_id)},
                                   timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout) as response:
                if response.status_code != 200:
                    self._check_answer(endpoint, path, response.status_code, response.read().decode())
                for obj in _json_objects(response.iter_text()):
                    if "error" in obj:
                        self._check_answer(endpoint, path, 500, json.dumps(obj["error"]))
                    return _int(obj.get("result", {}), "TTL")
        except httpx.TransportError as e:
            raise _EndpointUnavailable(f"{endpoint}: {str(e) or type(e).__name__}") from e
        except ValueError as e:
            raise EtcdError(f"etcd at {endpoint} sent a bad {path} stream: {e}") from e
        raise EtcdError(f"etcd at {endpoint} ended {path} without an answer")

    # --- cluster ---------------------------------------------------------------------

    def status(self, endpoint: str, timeout: float | None = None) -> EtcdStatus:
        """The status of the member serving ``endpoint`` (asked there, no failover)."""
        endpoint = endpoint.rstrip("/")
        answer = self._post_at(endpoint, "/v3/maintenance/status", {}, timeout)
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
        return _members(self._post("/v3/cluster/member/list", {}))

    def _member(self, member_id: int) -> EtcdMember:
        for member in self.member_list():
            if member.id == member_id:
                return member
        raise EtcdError(f"etcd at {self.endpoints[self._preferred]} has no member {member_id:x}")

    # --- membership (ids go out as strings: they exceed JSON's safe integers) --------

    def member_add(self, peer_urls: Sequence[str], *, learner: bool
                   ) -> tuple[EtcdMember, list[EtcdMember]]:
        """Add a member; return it and the member list to start it with
        (see :func:`initial_cluster`)."""
        answer = self._post("/v3/cluster/member/add",
                            {"peerURLs": list(peer_urls), "isLearner": learner})
        return _member(answer.get("member", {})), _members(answer)

    def member_promote(self, member_id: int) -> list[EtcdMember]:
        """Make a learner a voter (etcd refuses one not yet in sync); return the members."""
        return _members(self._post("/v3/cluster/member/promote", {"ID": str(member_id)}))

    def member_remove(self, member_id: int) -> list[EtcdMember]:
        """Remove a member (etcd stops its process); return the remaining members."""
        return _members(self._post("/v3/cluster/member/remove", {"ID": str(member_id)}))

    def member_update(self, member_id: int, peer_urls: Sequence[str]) -> list[EtcdMember]:
        """Change a voter's peer URLs; return the members.

        Learners are refused: etcd 3.4 then lists the learner as a voter while raft keeps
        it a learner, so it can never be promoted and a second learner gets in (etcd#21694).
        """
        member = self._member(member_id)
        if member.is_learner:
            raise EtcdError(f"etcd learner {member_label(member)} cannot change its peer URLs "
                            "(etcd 3.4 would forget it is a learner): remove and add it again")
        return _members(self._post("/v3/cluster/member/update",
                                   {"ID": str(member_id), "peerURLs": list(peer_urls)}))

    # --- leadership and health -------------------------------------------------------

    def statuses(self, members: Sequence[EtcdMember], timeout: float | None
                  ) -> dict[int, EtcdStatus | str]:
        """Each member's status, or why there is none, by member id."""
        statuses: dict[int, EtcdStatus | str] = {}
        for member in members:
            if not member.client_urls:
                statuses[member.id] = "not started (no client URL)"
                continue
            try:
                statuses[member.id] = self.status(member.client_urls[0], timeout)
            except EtcdError as e:
                statuses[member.id] = str(e)
        return statuses

    def leader(self) -> tuple[EtcdMember, EtcdStatus]:
        """The current leader and its own status (asked at its client URL)."""
        members = self.member_list()
        statuses = self.statuses(members, None)
        for member in members:
            status = statuses[member.id]
            if isinstance(status, EtcdStatus) and status.is_leader:
                return member, status
        reasons = "; ".join(f"{member_label(m)}: {statuses[m.id]}" for m in members
                            if not isinstance(statuses[m.id], EtcdStatus))
        raise EtcdError(f"no etcd member at {', '.join(self.endpoints)} is the leader"
                        + (f" ({reasons})" if reasons else ""))

    def move_leader(self, target_id: int) -> None:
        """Hand leadership to ``target_id``; returns once it leads (etcd waits for that).

        Only the leader accepts the transfer, so it is asked at the leader's client URL.
        """
        leader, status = self.leader()
        if leader.id != target_id:
            self._post_at(status.endpoint, "/v3/maintenance/transfer-leadership",
                          {"targetID": str(target_id)})

    def learner_progress(self, member_id: int) -> float:
        """How much of the leader's raft log the member has (0.0-1.0); 0.0 while it does
        not serve its client URL yet. etcd promotes a learner only from 0.9 on."""
        learner = self._member(member_id)
        _, leader = self.leader()
        status = self.statuses([learner], None)[member_id]
        if not isinstance(status, EtcdStatus) or leader.raft_index == 0:
            return 0.0
        return min(1.0, status.raft_index / leader.raft_index)

    def cluster_health(self, timeout: float = 1.0) -> ClusterHealth:
        """Every member asked for its status (``timeout`` each): unreachable members,
        members without a leader and members with an alarm are unhealthy."""
        members = self.member_list()
        statuses = self.statuses(members, timeout)
        alarms = {alarm.member_id: alarm.alarm for alarm in self.alarms()}
        leaders = Counter(s.leader for s in statuses.values()
                          if isinstance(s, EtcdStatus) and s.leader)
        unhealthy = []
        for member in members:
            status = statuses[member.id]
            if not isinstance(status, EtcdStatus):
                unhealthy.append(f"{member_label(member)}: {status}")
            elif not status.leader:
                unhealthy.append(f"{member_label(member)}: knows no leader")
            elif member.id in alarms:
                unhealthy.append(f"{member_label(member)}: alarm {alarms[member.id]}")
        return ClusterHealth(tuple(members), leaders.most_common(1)[0][0] if leaders else 0,
                             tuple(unhealthy))

    # --- snapshot --------------------------------------------------------------------

    def _stream_snapshot(self, endpoint: str, out: BinaryIO) -> None:
        path = "/v3/maintenance/snapshot"
        out.seek(0)  # an endpoint that failed part-way left bytes behind
        out.truncate()
        try:
            with self._http.stream("POST", endpoint + path, json={}) as response:
                if response.status_code != 200:
                    self._check_answer(endpoint, path, response.status_code, response.read().decode())
                for obj in _json_objects(response.iter_text()):
                    if "error" in obj:
                        self._check_answer(endpoint, path, 500, json.dumps(obj["error"]))
                    out.write(_unb64(obj.get("result", {}).get("blob")))
        except httpx.TransportError as e:
            raise _EndpointUnavailable(f"{endpoint}: {str(e) or type(e).__name__}") from e
        except ValueError as e:
            raise EtcdError(f"etcd at {endpoint} sent a bad snapshot stream: {e}") from e

    def snapshot(self, path: str | os.PathLike[str]) -> SnapshotStatus:
        """Save a snapshot of the keyspace to ``path`` (mode 0600), verified with
        ``etcdctl snapshot status`` before it replaces ``path``; return that status."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        try:
            with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                self._first_answer("/v3/maintenance/snapshot",
                                   lambda endpoint: self._stream_snapshot(endpoint, out))
                out.flush()
                os.fsync(out.fileno())
            status = verify_snapshot(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return status
