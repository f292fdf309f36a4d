"""The HA path to the apiservers: haproxy and keepalived on the LB hosts, nginx on the nodes.

Pure: model objects in, configuration text out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from ipaddress import IPv4Address
from pathlib import PurePosixPath
from typing import NamedTuple

from kubeha.errors import InputError
from kubeha.model import DEFAULT_VRID, Cluster, Host, VirtualIP
from kubeha.render._text import render_template


class Backend(NamedTuple):
    """One apiserver behind a proxy: a server name, its address and port."""

    name: str
    address: str
    port: int


# The Debian unit creates no /run/haproxy/, so the runtime API socket lives in /run itself.
HAPROXY_ADMIN_SOCKET = PurePosixPath("/run/haproxy-admin.sock")
# Where kubeha saves the servers' states before a reload (see kubeha.lb.apply); the Debian
# package makes /var/lib/haproxy.
HAPROXY_SERVER_STATE = PurePosixPath("/var/lib/haproxy/server-state")



def _haproxy_check(cluster: Cluster) -> dict[str, str | int]:
    """Health-check timings from the inventory (defaults: inter 400 ms, fall 3, rise 2).

    With the defaults a dead or hung apiserver is out of rotation within 2 s: the next
    check starts within `inter`, each check gives up after `timeout check` (= inter), and
    `fall` failures `fastinter` apart mark it down: 400 + 3 x 400 + 2 x 100 = 1800 ms at
    worst; a refused connect takes < 1 s. 400 ms leaves a slow /readyz room.

    A server marked down is checked every `fastinter` too (`downinter`): after an etcd
    leader election every apiserver's /readyz fails at once and every server goes down, and
    the API is back `rise` x 100 ms after etcd, not up to a second later. The cost is a
    cheap failed check 10 times a second per down server.
    """
    lb = cluster.load_balancer
    inter = lb.haproxy_check_interval_ms
    fastinter = f"{max(inter // 4, 10)}ms"
    return {"inter": f"{inter}ms", "fastinter": fastinter, "downinter": fastinter,
            "fall": lb.haproxy_check_fall, "rise": lb.haproxy_check_rise, "timeout": f"{inter}ms"}


# A connect to a live apiserver is answered by its kernel in well under a millisecond even
# when the apiserver is busy; one that takes 150 ms goes to a dead or unreachable host.
# Giving up then and redispatching (`retries 1`) answers the client within a few hundred
# ms while the dead server waits to be marked down (up to 1.8 s), instead of after 1 s.
_HAPROXY_TIMEOUTS = {"connect": "150ms", "session": "1h"}
# A dead holder is replaced after 3 missed adverts plus skew: ~0.35 s (VRRPv3 only). A host
# that stalls longer loses the VIP; the lab's full test run on 2 busy cores passes. Not at
# real-time priority (vrrp_rt_priority): keepalived 2.2.7 then kills its own VRRP process on
# the reload after a handoff (RLIMIT_RTTIME), and the VIP bounces between hosts.
KEEPALIVED_ADVERT_INT = 0.1
# The check goes through the local haproxy to an apiserver's /readyz: when the whole cluster
# is slow, every LB host's check is slow together, and a strict check would release the VIP
# everywhere at once. 3 misses of 2 s each tolerate a slow moment; a dead host is caught by
# the VRRP adverts (3 x advert_int), not by this check.
_KEEPALIVED_SCRIPT = {"interval": 1, "timeout": 3, "fall": 3, "rise": 2}
_KEEPALIVED_CHECK_MAX_TIME = 2


def default_backends(cluster: Cluster) -> tuple[Backend, ...]:
    """Every master's apiserver, in inventory order."""
    return tuple(Backend(m.name, str(m.address), cluster.apiserver_port) for m in cluster.masters)


def _backends(cluster: Cluster, backends: Sequence[tuple[str, str, int]] | None) -> tuple[Backend, ...]:
    chosen = default_backends(cluster) if backends is None else tuple(Backend(*b) for b in backends)
    if not chosen:
        raise InputError(f"cluster {cluster.name} has no apiserver to proxy to: add a master")
    return chosen


def _vip(cluster: Cluster) -> VirtualIP:
    if cluster.vip is None:
        raise InputError(f"cluster {cluster.name} has no VIP: set vip in the inventory")
    return cluster.vip


def render_haproxy_cfg(
    cluster: Cluster, backends: Sequence[tuple[str, str, int]] | None = None, *, down: Collection[str] = (),
) -> str:
    """haproxy.cfg for an LB host: TCP passthrough from ``*:<vip port>`` to the apiservers.

    ``backends`` (name, address, port) replaces the cluster's masters, for transitional
    sets. Servers are health-checked with ``GET /readyz`` over TLS; sessions on a server
    marked down are cut; the runtime API listens on ``HAPROXY_ADMIN_SOCKET``. Works with
    the Debian unit (``haproxy -Ws``): no daemon, chroot or user lines. Servers named in
    ``down`` start ``disabled`` (in maintenance: a new apiserver not yet ready).
    """
    return render_template(
        "haproxy.cfg.j2",
        cluster_name=cluster.name,
        ports=sorted({_vip(cluster).port, *(v.port for v in cluster.vips)}),
        backends=_backends(cluster, backends),
        down=frozenset(down),
        admin_socket=HAPROXY_ADMIN_SOCKET,
        server_state_file=HAPROXY_SERVER_STATE,
        hard_stop_after="30s",
        check=_haproxy_check(cluster),
        timeouts=_HAPROXY_TIMEOUTS,
    )


def render_keepalived_conf(
    cluster: Cluster,
    host: Host,
    priority: int,
    *,
    unicast: bool | None = None,
    peers: Sequence[IPv4Address | str] | None = None,
    preempt: bool = False,
) -> str:
    """keepalived.conf for ``host``: one VRRPv3 instance holding the VIP.

    Every host starts as BACKUP with ``nopreempt``; the highest ``priority`` that comes up
    first takes the VIP and keeps it until it stops or its check fails. The check fetches
    ``/readyz`` through the local haproxy. Every VIP of the cluster (``vip`` and
    ``extra_vips``) of one VRID moves together. With ``unicast`` (default: the inventory's
    ``load_balancer.keepalived_unicast``) the adverts go to ``peers``
    (default: the other LB hosts) instead of the VRRP multicast group; a host without
    peers (a single LB host) has nobody to advertise to and keeps multicast. With
    ``preempt`` the host takes the VIP from a holder of lower priority (a handoff, see
    ``kubeha.lb.apply.hand_over_vip``).
    """
    vip = _vip(cluster)
    if unicast is None:
        unicast = cluster.load_balancer.keepalived_unicast
    if not 1 <= priority <= 254:
        raise InputError(f"keepalived priority {priority} on {host.name} is outside 1..254")
    for v in cluster.vips:
        if v.address == host.address:
            raise InputError(f"the VIP {v.address} is the address of {host.name}: choose a free address")
    if peers is None:
        peers = [h.address for h in cluster.lb_hosts if h.name != host.name]
    peer_addresses = [str(IPv4Address(str(p))) for p in peers]
    if str(vip.address) in peer_addresses:
        raise InputError(f"the VIP {vip.address} is also a keepalived peer address: choose a free address")
    return render_template(
        "keepalived.conf.j2",
        cluster_name=cluster.name,
        router_id=host.name,
        instances=_vrrp_instances(cluster),
        script_name="kube_apiserver_via_haproxy",
        check_script=(f"/usr/bin/curl -sfk --max-time {_KEEPALIVED_CHECK_MAX_TIME} -o /dev/null "
                      f"https://127.0.0.1:{vip.port}/readyz"),
        script=_KEEPALIVED_SCRIPT,
        priority=priority,
        preempt=preempt,
        advert_int=KEEPALIVED_ADVERT_INT,
        unicast_src_ip=str(host.address) if unicast and peer_addresses else None,
        peers=peer_addresses,
    )


def _vrrp_instances(cluster: Cluster) -> list[dict[str, object]]:
    """One VRRP instance per VRID, in the order of ``cluster.vips``: VIPs that share a VRID
    move together. A VIP of its own VRID is served or retired without touching the other
    instance (a backup whose instance lists other addresses than the master's adverts drops
    them and takes the addresses too; see change-endpoint)."""
    instances: dict[int, dict[str, object]] = {}
    for v in cluster.vips:
        # keepalived knows an instance by its name across a reload: one name per VRID, the
        # default VRID's the name it always had
        name = "kube_apiserver_vip" if v.vrid == DEFAULT_VRID else f"kube_apiserver_vip_{v.vrid}"
        instance = instances.setdefault(v.vrid, {"name": name, "interface": v.interface, "vrid": v.vrid, "vips": []})
        instance["vips"].append(v.address)  # type: ignore[attr-defined]
    return list(instances.values())


def render_node_proxy_conf(
    cluster: Cluster, backends: Sequence[tuple[str, str, int]] | None = None, *,
    down: Collection[str] = (),
) -> str:
    """nginx.conf of the node-local proxy: ``127.0.0.1:<node-local port>`` to every apiserver.

    A stream-only nginx (no http block, no includes) for Debian's unit
    (``nginx -g 'daemon on; master_process on;'``, pid /run/nginx.pid). New connections go
    to the least busy apiserver; a failed connect is retried on the next one, and a server
    that failed is skipped for ``fail_timeout``. ``backends`` as for ``render_haproxy_cfg``.
    Servers named in ``down`` are marked ``down``: out of rotation (an apiserver about to
    restart, see ``kubeha.lb.drain``).
    """
    return render_template(
        "nginx.conf.j2",
        cluster_name=cluster.name,
        port=cluster.node_local_port,
        backends=_backends(cluster, backends),
        down=frozenset(down),
        # one failed connect is evidence enough (the next server is tried anyway); 5 s
        # away lets a restarted apiserver back soon
        max_fails=1,
        fail_timeout="5s",
        connect_timeout="1s",
        session_timeout="1h",
    )
