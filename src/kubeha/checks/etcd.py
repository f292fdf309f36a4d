"""Checks of etcd: member health, quorum, leader, learners, versions, size, alarms, and
which members each apiserver uses."""

from __future__ import annotations

from kubeha.checks.hosts import gathered, unreadable
from kubeha.checks.result import CheckResult, failed, gib, passed, warned
from kubeha.checks.snapshot import ClusterSnapshot, address_of
from kubeha.discover.discover import component_file

DEFAULT_QUOTA_BYTES = 2 * 2**30  # etcd's --quota-backend-bytes default
DB_WARN_FRACTION = 0.80
LOOPBACK = ("127.0.0.1", "localhost")


def _member_names(snapshot: ClusterSnapshot) -> dict[int, str]:
    names = {m.id: m.name or f"{m.id:x}" for m in snapshot.etcd.members}
    names.update((h.status.member_id, h.host) for h in snapshot.etcd.health if h.status)
    return names


def check_etcd_health(snapshot: ClusterSnapshot) -> list[CheckResult]:
    results = []
    for m in snapshot.etcd.health:
        if m.status is None:
            results.append(failed("etcd health", m.host, f"{m.endpoint} does not answer: {m.error}"))
        elif not m.healthy:
            results.append(failed("etcd health", m.host, f"{m.endpoint} answers but cannot serve a "
                                                          f"linearizable read: {m.error}"))
        else:
            results.append(passed("etcd health", m.host, f"healthy (etcd {m.status.version}, "
                                                          f"raft index {m.status.raft_index})"))
    return results


def check_etcd_quorum(snapshot: ClusterSnapshot) -> list[CheckResult]:
    etcd = snapshot.etcd
    if etcd.member_list_error:
        return [failed("etcd quorum", "etcd", f"cannot list the members: {etcd.member_list_error}")]
    voters = {m.id for m in etcd.members if not m.is_learner}
    healthy = {m.status.member_id for m in etcd.health if m.healthy and m.status} & voters
    quorum = len(voters) // 2 + 1
    counts = f"{len(healthy)} of {len(voters)} voting members healthy"
    if len(healthy) < quorum:
        return [failed("etcd quorum", "etcd", f"only {counts}, quorum is {quorum}: etcd accepts no writes")]
    if len(healthy) == quorum and len(voters) > 1:
        return [warned("etcd quorum", "etcd", f"{counts} (quorum {quorum}): one more failure stops etcd")]
    return [passed("etcd quorum", "etcd", f"{counts} (quorum {quorum})")]


def check_etcd_leader(snapshot: ClusterSnapshot) -> list[CheckResult]:
    names = _member_names(snapshot)
    leaders = sorted({m.status.leader for m in snapshot.etcd.health if m.status and m.status.leader})
    if not leaders:
        return [failed("etcd leader", "etcd", "no member knows a leader")]
    if len(leaders) > 1:
        return [failed("etcd leader", "etcd", "members disagree on the leader: "
                                               + ", ".join(names.get(i, f"{i:x}") for i in leaders))]
    return [passed("etcd leader", "etcd", f"leader is {names.get(leaders[0], f'{leaders[0]:x}')}")]


def check_etcd_learners(snapshot: ClusterSnapshot) -> list[CheckResult]:
    learners = [m for m in snapshot.etcd.members if m.is_learner]
    if not learners:
        return [passed("etcd learners", "etcd", "no learners")] if snapshot.etcd.members else []
    return [warned("etcd learners", m.name or f"{m.id:x}", "is a learner: it does not vote until promoted")
            for m in learners]


def check_etcd_versions(snapshot: ClusterSnapshot) -> list[CheckResult]:
    versions = {m.host: m.status.version for m in snapshot.etcd.health if m.status}
    if not versions:
        return []
    if len(set(versions.values())) > 1:
        return [warned("etcd versions", "etcd", "members run different versions: "
                                                 + ", ".join(f"{h} {v}" for h, v in versions.items()))]
    return [passed("etcd versions", "etcd", f"every member runs {next(iter(versions.values()))}")]


def check_etcd_db_size(snapshot: ClusterSnapshot) -> list[CheckResult]:
    flags = {h.name: h.etcd_flags or {} for h in snapshot.hosts}
    results = []
    for m in snapshot.etcd.health:
        if m.status is None:
            continue
        quota = int(flags.get(m.host, {}).get("quota-backend-bytes") or DEFAULT_QUOTA_BYTES)
        share = m.status.db_size / quota
        size = f"database {gib(m.status.db_size)} is {share:.0%} of the {gib(quota)} quota"
        if share > DB_WARN_FRACTION:
            results.append(warned("etcd db size", m.host, f"{size}: compact and defragment before it fills"))
        else:
            results.append(passed("etcd db size", m.host, size))
    return results


def check_etcd_alarms(snapshot: ClusterSnapshot) -> list[CheckResult]:
    etcd = snapshot.etcd
    if etcd.alarms_error:
        return [failed("etcd alarms", "etcd", f"cannot read the alarms: {etcd.alarms_error}")]
    if not etcd.alarms:
        return [passed("etcd alarms", "etcd", "no alarms")]
    names = _member_names(snapshot)
    return [failed("etcd alarms", names.get(a.member_id, f"{a.member_id:x}"),
                   f"{a.alarm} alarm raised: etcd refuses writes until it is resolved and disarmed")
            for a in etcd.alarms]


def check_etcd_servers(snapshot: ClusterSnapshot) -> list[CheckResult]:
    """Every apiserver's --etcd-servers are members, and at least one of them is healthy."""
    cluster = snapshot.cluster
    if snapshot.etcd.member_list_error:
        return []  # members unknown: the quorum check fails already
    members = {address_of(u) for m in snapshot.etcd.members for u in m.client_urls}
    healthy = {address_of(m.endpoint) for m in snapshot.etcd.health if m.healthy}
    apiserver_file = component_file(cluster.layout, "kube-apiserver")
    results = []
    for h in gathered(snapshot):
        if h.host not in cluster.masters:
            continue
        if h.apiserver_flags is None:
            why = unreadable(h, "apiserver_flags") or f"{apiserver_file} is missing"
            results.append(failed("etcd servers", h.name, f"cannot read the apiserver's flags: {why}"))
            continue
        urls = [u for u in h.apiserver_flags.get("etcd-servers", "").split(",") if u]
        stale, down = [], []
        for url in urls:
            at = address_of(url)
            if at is not None and at[0] in LOOPBACK:
                at = (str(h.host.address), at[1])  # a stacked master's own member
            if at not in members:
                stale.append(url)
            elif at not in healthy:
                down.append(url)
        if not urls:
            results.append(failed("etcd servers", h.name, "the apiserver has no --etcd-servers"))
        elif stale:
            results.append(failed("etcd servers", h.name, f"--etcd-servers lists {', '.join(stale)}, "
                                                          f"which no etcd member serves"))
        elif len(down) == len(urls):
            results.append(failed("etcd servers", h.name, f"no --etcd-servers is healthy "
                                                          f"({', '.join(down)}): the apiserver cannot serve"))
        elif down:
            results.append(warned("etcd servers", h.name, f"{', '.join(down)} of --etcd-servers is not healthy"))
        else:
            results.append(passed("etcd servers", h.name, f"--etcd-servers are {len(urls)} healthy members"))
    return results


ETCD_CHECKS = (check_etcd_health, check_etcd_quorum, check_etcd_leader, check_etcd_learners,
               check_etcd_versions, check_etcd_db_size, check_etcd_alarms, check_etcd_servers)
