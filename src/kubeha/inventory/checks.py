"""The checks a well-typed cluster.yaml must still pass: one Problem per thing wrong."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from kubeha.inventory.problems import Problem, field_path
from kubeha.model import EtcdTopology, Role

if TYPE_CHECKING:
    from kubeha.inventory.document import ClusterDocument


def cluster_problems(document: ClusterDocument) -> list[Problem]:
    return [*_host_problems(document), *_role_problems(document), *_vip_problems(document),
            *_network_problems(document)]


def _host_problems(document: ClusterDocument) -> Iterator[Problem]:
    for field in ("name", "address"):
        first: dict[object, int] = {}
        for i, host in enumerate(document.hosts):
            value = getattr(host, field)
            if value in first:
                other = document.hosts[first[value]]
                label = other.address if field == "name" else other.name
                yield Problem(("hosts", i, field), f"{value} is also the {field} of hosts[{first[value]}] "
                                                   f"({label}): each host needs its own")
            first.setdefault(value, i)
    # a host without roles is a spare: a machine an operation may move etcd or a master to


def _role_problems(document: ClusterDocument) -> Iterator[Problem]:
    topology = document.setting("etcd_topology")
    for role in (Role.MASTER, Role.ETCD):
        if not any(role in h.roles for h in document.hosts):
            yield Problem(("hosts",), f"no host has the role {role.value}: a cluster needs at least one")
    for i, host in enumerate(document.hosts):
        roles = set(host.roles)
        if Role.ETCD in roles and topology is EtcdTopology.STACKED and Role.MASTER not in roles:
            yield Problem(("hosts", i, "roles"),
                          f"{host.name} runs etcd but is not a master: stacked etcd runs on the "
                          "masters (set etcd_topology: external for etcd on hosts of its own)")
        if Role.LB in roles and Role.WORKER in roles and Role.MASTER not in roles:
            yield Problem(("hosts", i, "roles"),
                          f"{host.name} is a worker and an lb host: workloads share it and drains "
                          "move the VIP; give lb to dedicated hosts or to masters")
        if Role.LB in roles and document.vip is None:
            yield Problem(("hosts", i, "roles"), f"{host.name} has the role lb but there is no vip to hold")


def _vip_problems(document: ClusterDocument) -> Iterator[Problem]:
    if document.vip is None:
        if document.extra_vips:
            yield Problem(("extra_vips",), "extra_vips need a vip: the vip is the cluster's endpoint")
        return
    owners = {h.address: h.name for h in document.hosts}
    seen = set()
    routers: dict[int, tuple[str, str]] = {}  # vrid -> (the first VIP's field, its interface)
    for loc, vip in [(("vip",), document.vip),
                     *((("extra_vips", i), v) for i, v in enumerate(document.extra_vips))]:
        if vip.address in owners:
            yield Problem((*loc, "address"),
                          f"{vip.address} is the address of host {owners[vip.address]}: a VIP needs a free address")
        elif vip.address in seen:
            yield Problem((*loc, "address"), f"{vip.address} is already a VIP of this cluster")
        seen.add(vip.address)
        first, interface = routers.setdefault(vip.vrid, (field_path(loc), vip.interface))
        if interface != vip.interface:
            yield Problem((*loc, "vrid"),
                          f"{vip.vrid} is also the vrid of {first} on {interface}: VIPs of one VRRP router share "
                          f"its interface; give the VIP on {vip.interface} a vrid of its own")
    lb_hosts_are_masters = not any(Role.LB in h.roles for h in document.hosts)
    apiserver_port = document.setting("apiserver_port")
    if lb_hosts_are_masters and document.vip.port == apiserver_port:
        yield Problem(("vip", "port"),
                      f"{apiserver_port} is the apiserver port, and haproxy runs on the masters "
                      "beside the apiserver: choose another port (8443)")


def _network_problems(document: ClusterDocument) -> Iterator[Problem]:
    network, services = document.network, document.service_cidr
    if network is None:
        return
    if services is not None and services.overlaps(network):
        yield Problem(("service_cidr",), f"{services} overlaps the hosts' network {network}")
    places = [(("hosts", i, "address"), h.address) for i, h in enumerate(document.hosts)]
    if document.vip is not None:
        places.append((("vip", "address"), document.vip.address))
    places += [(("extra_vips", i, "address"), v.address) for i, v in enumerate(document.extra_vips)]
    for loc, address in places:
        if address not in network:
            yield Problem(loc, f"{address} is outside the network {network}")
        elif address in (network.network_address, network.broadcast_address) and network.prefixlen < 31:
            yield Problem(loc, f"{address} is the network or broadcast address of {network}")
