"""Checks of the certificates on the hosts: expiry of every one, SANs of the apiservers'."""

from __future__ import annotations

import datetime as dt
from ipaddress import IPv4Address

from kubeha.checks.hosts import gathered, unreadable
from kubeha.checks.result import CheckResult, failed, passed, verdict, warned
from kubeha.checks.snapshot import ClusterSnapshot, HostSnapshot
from kubeha.model import Cluster

EXPIRY_WARN = dt.timedelta(days=30)


def check_cert_expiry(snapshot: ClusterSnapshot) -> list[CheckResult]:
    now = snapshot.taken_at
    results = []
    for h in gathered(snapshot):
        if why := unreadable(h, "certs"):
            results.append(failed("cert expiry", h.name, f"cannot read the certificates: {why}"))
            continue
        problems = []
        for cert in h.certs:
            if cert.not_after is None:
                problems.append(warned("cert expiry", h.name, f"{cert.path} holds no readable certificate"))
            elif cert.not_after <= now:
                problems.append(failed("cert expiry", h.name, f"{cert.path} expired on {cert.not_after:%Y-%m-%d}"))
            elif cert.not_after - now < EXPIRY_WARN:
                problems.append(warned("cert expiry", h.name, f"{cert.path} expires on {cert.not_after:%Y-%m-%d}, "
                                                              f"in {(cert.not_after - now).days} days"))
        valid = [c for c in h.certs if c.not_after is not None]
        if problems:
            results += problems
        elif valid:
            first = min(valid, key=lambda c: c.not_after)  # type: ignore[arg-type, return-value]
            results.append(passed("cert expiry", h.name, f"{len(valid)} certificates valid 30+ days; first to "
                                                         f"expire: {first.path} on {first.not_after:%Y-%m-%d}"))
    return results


def required_apiserver_names(cluster: Cluster, h: HostSnapshot, node_proxies: bool) -> list[str]:
    """What clients use to reach this apiserver: the in-cluster names and service IP, every
    VIP, the master's own addresses, and 127.0.0.1 where node-local proxies pass TLS through."""
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
             f"kubernetes.default.svc.{cluster.cluster_domain}", str(cluster.service_ip)]
    names += [str(v.address) for v in cluster.vips]
    names.append(str(h.host.address))
    advertised = (h.apiserver_flags or {}).get("advertise-address")
    if advertised:
        names.append(str(IPv4Address(advertised)))
    if node_proxies:
        names.append("127.0.0.1")
    return list(dict.fromkeys(names))


def check_apiserver_sans(snapshot: ClusterSnapshot) -> list[CheckResult]:
    cluster = snapshot.cluster
    node_proxies = cluster.node_local_proxy or any(h.node_proxy for h in snapshot.hosts)
    results = []
    for h in gathered(snapshot):
        if h.host not in cluster.masters:
            continue
        path = (h.apiserver_flags or {}).get("tls-cert-file") or str(cluster.paths.apiserver.cert)
        cert = next((c for c in h.certs if c.path == path), None)
        if cert is None:
            why = unreadable(h, "certs") or "no such certificate"
            results.append(failed("apiserver SANs", h.name, f"cannot read {path}: {why}"))
            continue
        missing = [n for n in required_apiserver_names(cluster, h, node_proxies) if not cert.sans.covers(n)]
        problems = [f"{path} lacks {', '.join(missing)}: clients using {'it' if len(missing) == 1 else 'them'} "
                    f"fail TLS"] if missing else []
        results.append(verdict("apiserver SANs", h.name, problems, f"{path} covers the VIPs, {h.host.address}, "
                                                                   f"the service IP and the in-cluster names"))
    return results


CERT_CHECKS = (check_cert_expiry, check_apiserver_sans)
