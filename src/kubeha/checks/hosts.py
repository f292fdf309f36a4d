"""Checks of each host on its own: reachable, root, clock, disk for etcd, /etc/fstab, services."""

from __future__ import annotations

from collections.abc import Iterator

from kubeha.checks.result import CheckResult, failed, gib, passed, warned
from kubeha.checks.snapshot import ClusterSnapshot, HostSnapshot
from kubeha.lb.plan import node_proxy_hosts
from kubeha.model import Cluster, Layout

CLOCK_WARN_SECONDS = 0.5
CLOCK_FAIL_SECONDS = 2.0
DISK_WARN_FRACTION = 0.20
DISK_FAIL_BYTES = 2 * 2**30


def gathered(snapshot: ClusterSnapshot) -> Iterator[HostSnapshot]:
    """The hosts whose facts were read (the others fail the ssh or sudo check)."""
    return (h for h in snapshot.hosts if h.gathered)


def unreadable(h: HostSnapshot, key: str) -> str | None:
    """Why a fact of ``h`` has no value, if it was asked for and failed."""
    return h.unreadable.get(key)


def check_ssh(snapshot: ClusterSnapshot) -> list[CheckResult]:
    return [failed("ssh", h.name, h.ssh_error) if h.ssh_error else
            passed("ssh", h.name, f"reachable as {h.host.ssh_user} at {h.host.address}:{h.host.ssh_port}")
            for h in snapshot.hosts]


def check_sudo(snapshot: ClusterSnapshot) -> list[CheckResult]:
    results = []
    for h in snapshot.hosts:
        if h.ssh_error:
            continue
        if h.sudo_error:
            results.append(failed("sudo", h.name, h.sudo_error))
        elif h.uid is None:
            results.append(failed("sudo", h.name, f"cannot tell the user commands run as: {unreadable(h, 'uid')}"))
        elif h.uid != 0:
            results.append(failed("sudo", h.name, f"commands run as uid {h.uid}, not root: set ssh.sudo: true "
                                                  f"in the inventory, or log in as root"))
        else:
            results.append(passed("sudo", h.name, "commands run as root"))
    return results


def check_clock(snapshot: ClusterSnapshot) -> list[CheckResult]:
    results = []
    for h in gathered(snapshot):
        if h.clock_skew is None:
            continue
        off = abs(h.clock_skew)
        where = f"clock is {h.clock_skew:+.1f} s off this machine's"
        if off > CLOCK_FAIL_SECONDS:
            results.append(failed("clock", h.name, f"{where} (more than {CLOCK_FAIL_SECONDS:g} s): "
                                                   f"leases and certificates misbehave; sync it with NTP"))
        elif off > CLOCK_WARN_SECONDS:
            results.append(warned("clock", h.name, f"{where} (more than {CLOCK_WARN_SECONDS:g} s); sync it with NTP"))
        else:
            results.append(passed("clock", h.name, f"clock within {CLOCK_WARN_SECONDS:g} s of this machine's"))
    return results


def check_etcd_disk(snapshot: ClusterSnapshot) -> list[CheckResult]:
    data_dir = snapshot.cluster.paths.etcd_data_dir
    results = []
    for h in gathered(snapshot):
        if h.host not in snapshot.cluster.etcd_members:
            continue
        disk = h.etcd_disk
        if disk is None:
            results.append(failed("etcd disk", h.name, f"cannot read the free space for {data_dir}: "
                                                       f"{unreadable(h, 'etcd_disk')}"))
            continue
        free = f"{gib(disk.free_bytes)} free ({disk.free_fraction:.0%}) on {disk.mount_point} for {data_dir}"
        if disk.free_bytes < DISK_FAIL_BYTES:
            results.append(failed("etcd disk", h.name, f"only {free}: etcd needs 2 GiB to grow and defragment"))
        elif disk.free_fraction < DISK_WARN_FRACTION:
            results.append(warned("etcd disk", h.name, f"only {free}"))
        else:
            results.append(passed("etcd disk", h.name, free))
    return results


def check_fstab(snapshot: ClusterSnapshot) -> list[CheckResult]:
    results = []
    for h in gathered(snapshot):
        if why := unreadable(h, "fstab_bad_lines"):
            results.append(failed("fstab", h.name, f"cannot read /etc/fstab: {why}"))
        elif h.fstab_bad_lines:
            results += [failed("fstab", h.name, f"/etc/fstab line {line.number} has {len(line.text.split())} "
                                                f"fields, mount needs 4: {line.text!r}")
                        for line in h.fstab_bad_lines]
        else:
            results.append(passed("fstab", h.name, "/etc/fstab parses"))
    return results


def expected_units(cluster: Cluster, h: HostSnapshot) -> tuple[str, ...]:
    """The units ``h`` must run, by its roles, the layout and the proxies configured on it."""
    host = h.host
    units = []
    kubeasz = cluster.layout is Layout.KUBEASZ
    if kubeasz and host in cluster.etcd_members:
        units.append("etcd")
    if kubeasz and host in cluster.masters:
        units += ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    if host in cluster.masters or host in cluster.workers:
        units.append("kubelet")
    if cluster.vip is not None and host in cluster.lb_hosts:
        units += ["haproxy", "keepalived"]
    if runs_node_proxy(cluster, h):
        units.append("nginx")
    return tuple(units)


def runs_node_proxy(cluster: Cluster, h: HostSnapshot) -> bool:
    """A node-local proxy is configured on ``h``, or should be by the inventory."""
    return h.node_proxy is not None or h.host in node_proxy_hosts(cluster)


def check_services(snapshot: ClusterSnapshot) -> list[CheckResult]:
    results = []
    for h in gathered(snapshot):
        units = expected_units(snapshot.cluster, h)
        if not units:
            continue
        if why := unreadable(h, "units"):
            results.append(failed("services", h.name, f"cannot read the unit states: {why}"))
            continue
        down = [f"{u} is {h.units.get(u, 'unknown')}" for u in units if h.units.get(u) != "active"]
        if down:
            results.append(failed("services", h.name, ", ".join(down)))
        else:
            results.append(passed("services", h.name, f"{', '.join(units)} active"))
    return results


HOST_CHECKS = (check_ssh, check_sudo, check_clock, check_etcd_disk, check_fstab, check_services)
