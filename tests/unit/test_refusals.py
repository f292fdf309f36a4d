"""The semantic refusals of issue 8, each shown refused: the ones the inventory alone decides
through the `kubeha` command line, before any host is touched (the hosts stubbed as in
test_bad_input); the ones that need a look at the cluster by the planner, over made-up facts
(`tests/lab` shows them live where the table says so).

docs/reliability.md's table of refusals is this module's cases (`KUBEHA_WRITE_DOCS=1 pytest
tests/unit/test_refusals.py` writes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from helpers.doc_tables import assert_doc_table
from test_bad_input import GOOD_YAML, REFUSED, RELIABILITY_MD, Case, run_case, stubbed_hosts

from kubeha.discover.configs import VrrpInstance
from kubeha.errors import InputError
from kubeha.etcd.gateway import EtcdMember
from kubeha.inventory import parse_inventory
from kubeha.model import Cluster
from kubeha.operations.endpoint_plan import (
    EndpointFacts, change_endpoint_plan, endpoint_refusals, moved_vip, parse_request,
)
from kubeha.operations.etcd_plan import (
    EtcdFacts, member_already, member_elsewhere, membership_change, parse_pairs, refusals,
)
from kubeha.operations.masters_plan import master_change, master_refusals, migration_change, migration_pairs

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
CLUSTER = parse_inventory(GOOD_YAML).cluster  # m1-m3 stacked, s1-s3 spares, w1, VIP 10.0.0.100 vrid 51 on eth0


def edited(old: str, new: str, text: str = GOOD_YAML) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


ONE_MASTER = edited("  - {name: m2, address: 10.0.0.12, roles: [etcd, master]}\n"
                    "  - {name: m3, address: 10.0.0.13, roles: [etcd, master]}\n", "")
NO_NETWORK = edited("network: 10.0.0.0/24\n", "")


# ---- made-up facts ---------------------------------------------------------------------------


def member(cluster: Cluster, host_name: str, **changes: object) -> EtcdMember:
    host = cluster.host(host_name)
    made = EtcdMember(id=int(host.address), name=host_name, peer_urls=(cluster.etcd_peer_url(host),),
                      client_urls=(f"https://{host.address}:2379",), is_learner=False)
    return replace(made, **changes)  # type: ignore[arg-type]


def etcd_facts(cluster: Cluster = CLUSTER, **changes: object) -> EtcdFacts:
    members = tuple(member(cluster, h.name) for h in cluster.etcd_members)
    return replace(EtcdFacts(members=members, leader_id=members[0].id), **changes)  # type: ignore[arg-type]


def endpoint_facts(cluster: Cluster = CLUSTER, **changes: object) -> EndpointFacts:
    """Every LB host with an eth0 in 10.0.0.0/24 holding the VIP on one of them, and a
    keepalived holding the VIP in vrid 51."""
    assert cluster.vip is not None
    ours = VrrpInstance(interface="eth0", vrid=cluster.vip.vrid, unicast=False, addresses=((cluster.vip.address, None),))
    facts = EndpointFacts(
        kubeconfigs={m.name: {} for m in cluster.masters},
        vip_interfaces={h.name: (IPv4Interface(f"{h.address}/24"),) for h in cluster.lb_hosts},
        keepalived={h.name: (ours,) for h in cluster.lb_hosts})
    return replace(facts, **changes)  # type: ignore[arg-type]


def plan_endpoint(arguments: Mapping[str, str], facts: EndpointFacts, cluster: Cluster = CLUSTER):
    return change_endpoint_plan(
        operation_id="change-endpoint-1", arguments=arguments, cluster=cluster,
        request=parse_request(cluster, arguments), facts=facts, nodes_steps=(), inventory_digest="sha256:a",
        inventory_path=Path("/tmp/cluster.yaml"), render_inventory=lambda after: "", now=NOW)


def etcd_reasons(adds=(), removes=(), cluster: Cluster = CLUSTER, **facts: object) -> str:
    change = membership_change(cluster, adds=list(adds), removes=list(removes))
    return "; ".join(refusals(cluster, change, etcd_facts(cluster, **facts)))


def migrate_reasons(replace_text: str, cluster: Cluster = CLUSTER, **facts: object) -> str:
    change = migration_change(cluster, migration_pairs(cluster, parse_pairs(replace_text)))
    return "; ".join(refusals(cluster, change, etcd_facts(cluster, **facts), even_ok=True))


def add_master_reasons(name: str, **facts: object) -> str:
    host, change = master_change(CLUSTER, name, True)
    return "; ".join(master_refusals(CLUSTER, host, True, change, etcd_facts(**facts), {}))


# ---- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    what: str  # the row of the table
    case: str
    expected: str  # in the refusal
    cli: tuple[str, ...] = ()  # refused by the command line before any host: its arguments
    inventory: str = GOOD_YAML  # the cluster.yaml the command line is given
    facts: Callable[[], str] | None = None  # refused over facts: the planner's reasons, one line
    live: str = ""  # the lab test a case showing it on real hosts belongs in (with what it must set up)


def _plan(*args: str) -> tuple[str, ...]:
    return ("plan", *args, "-i", "{dir}/case.yaml", "--journal", "{dir}/journal.sqlite")


def _show() -> tuple[str, ...]:
    return ("inventory", "show", "-i", "{dir}/case.yaml")


def _endpoint_reasons(arguments: Mapping[str, str], cluster: Cluster = CLUSTER, **facts: object) -> str:
    return "; ".join(endpoint_refusals(cluster, parse_request(cluster, arguments), endpoint_facts(cluster, **facts)))


DUPLICATES = "duplicate addresses"
VIP_USED = "a VIP already in use"
VIP_SUBNET = "a VIP outside the hosts' subnet"
VRID = "a VRID collision"
EVEN = "an even final etcd size"
LAST_MASTER = "removing the last master"
OTHER_ETCD = "a NEW host already in another etcd cluster"
OLD_MISSING = "an OLD that is not in the cluster"
SAN = "a cert SAN list that drops an address still in use"
FOREIGN_KEEPALIVED = {"s1": (VrrpInstance(interface="eth0", vrid=52, unicast=False,
                                          addresses=((CLUSTER.host("s1").address, None),)),)}

CASES = (
    Refusal(DUPLICATES, "two hosts with one address in cluster.yaml", "is also the address of hosts[3] (s1)",
            cli=_show(), inventory=edited("address: 10.0.0.22", "address: 10.0.0.21")),
    Refusal(DUPLICATES, "a host's address as the VIP", "is the address of host m1: a VIP needs a free address",
            cli=_show(), inventory=edited("address: 10.0.0.100", "address: 10.0.0.11")),
    Refusal(DUPLICATES, "an extra VIP that is the VIP", "is already a VIP of this cluster", cli=_show(),
            inventory=edited("hosts:\n", "extra_vips:\n  - address: 10.0.0.100\n    vrid: 52\nhosts:\n")),
    Refusal(DUPLICATES, "a NEW named twice in --replace", "s1 is named more than once",
            cli=_plan("migrate-masters", "--replace", "m1=s1,m2=s1")),
    Refusal(DUPLICATES, "two kubespray hosts with one ip", "is also the address of hosts[0] (node1)",
            cli=("inventory", "import", "kubespray", "{dir}/case.yaml"),
            inventory="[kube_control_plane]\nnode1 ip=10.3.0.1\nnode2 ip=10.3.0.1\n[etcd]\nnode1\n"),
    Refusal(VIP_USED, "--vip a host's address", "10.0.0.11 is the address of m1",
            cli=_plan("change-endpoint", "--vip", "10.0.0.11")),
    Refusal(VIP_USED, "--vip the VIP's own address", "the endpoint is 10.0.0.100:8443 already",
            cli=_plan("change-endpoint", "--vip", "10.0.0.100")),
    Refusal(VIP_USED, "--vip the network's broadcast address", "10.0.0.255 is the network or broadcast address",
            cli=_plan("change-endpoint", "--vip", "10.0.0.255")),
    Refusal(VIP_USED, "--vip held on an LB host's interface already", "10.0.0.200 is on eth0 of m2 already",
            facts=lambda: _endpoint_reasons({"vip": "10.0.0.200"}, vip_interfaces={
                "m1": (IPv4Interface("10.0.0.11/24"),),
                "m2": (IPv4Interface("10.0.0.12/24"), IPv4Interface("10.0.0.200/32"))}),
            live="tests/lab/test_change_endpoint.py (the VIP put on a master's eth0 by hand first)"),
    Refusal(VIP_SUBNET, "a VIP outside cluster.yaml's network", "10.0.1.100 is outside the network 10.0.0.0/24",
            cli=_show(), inventory=edited("address: 10.0.0.100", "address: 10.0.1.100")),
    Refusal(VIP_SUBNET, "--vip outside cluster.yaml's network", "outside the hosts' subnet 10.0.0.0/24",
            cli=_plan("change-endpoint", "--vip", "10.0.1.200")),
    Refusal(VIP_SUBNET, "--vip outside the LB hosts' eth0 subnet (no network in cluster.yaml)",
            "10.0.1.200 is outside the subnet of eth0 on m1 (10.0.0.0/24)",
            facts=lambda: _endpoint_reasons({"vip": "10.0.1.200"}, parse_inventory(NO_NETWORK).cluster),
            live="tests/lab/test_change_endpoint.py"),
    Refusal(VIP_SUBNET, "an LB host without the VIP's interface", "m3 has no IPv4 address on eth0",
            facts=lambda: _endpoint_reasons({"vip": "10.0.0.200"}, vip_interfaces={
                "m1": (IPv4Interface("10.0.0.11/24"),), "m3": ()}),
            live="tests/lab/test_change_endpoint.py"),
    Refusal(VRID, "two VIPs of one vrid on two interfaces in cluster.yaml",
            "51 is also the vrid of vip on eth0: VIPs of one VRRP router share its interface", cli=_show(),
            inventory=edited("hosts:\n", "extra_vips:\n  - address: 10.0.0.101\n    interface: eth1\nhosts:\n")),
    Refusal(VRID, "--vrid the VIP's own", "VRID 51 is the VRRP instance of a VIP already",
            cli=_plan("change-endpoint", "--vip", "10.0.0.200", "--vrid", "51")),
    Refusal(VRID, "--vrid of another keepalived instance on an LB host",
            "VRID 52 is in use by a keepalived instance on s1 holding 10.0.0.21",
            facts=lambda: _endpoint_reasons({"vip": "10.0.0.200", "vrid": "52"}, keepalived=FOREIGN_KEEPALIVED),
            live="tests/lab/test_change_endpoint.py (a second vrrp_instance in an LB host's keepalived.conf)"),
    Refusal(EVEN, "etcd add: 3 members to 4", "the change would leave 4 members: an even count",
            facts=lambda: etcd_reasons(adds=["s1"])),
    Refusal(EVEN, "etcd remove: 3 members to 2", "the change would leave 2 members: an even count",
            facts=lambda: etcd_reasons(removes=["m3"])),
    Refusal(EVEN, "etcd migrate: 3 out, 2 in", "the change would leave 2 members: an even count",
            facts=lambda: etcd_reasons(adds=["s1", "s2"], removes=["m1", "m2", "m3"])),
    Refusal(LAST_MASTER, "remove-master of the only master", "m1 is the last master: add another master first",
            cli=_plan("remove-master", "m1"), inventory=ONE_MASTER),
    Refusal(LAST_MASTER, "etcd remove of the only member", "the change would leave etcd without members",
            facts=lambda: etcd_reasons(removes=["m1"], cluster=parse_inventory(ONE_MASTER).cluster)),
    Refusal(OTHER_ETCD, "NEW runs an etcd that is not a member", "s1 runs an etcd that is not a member of this cluster",
            facts=lambda: migrate_reasons("m1=s1", new_hosts_running_etcd=frozenset({"s1"})),
            live="tests/lab/test_migrate_masters.py (etcd started by hand on the spare first)"),
    Refusal(OTHER_ETCD, "NEW holds etcd data", "s1 already holds etcd data in /var/lib/etcd",
            facts=lambda: add_master_reasons("s1", new_hosts_with_data=frozenset({"s1"})),
            live="tests/lab/test_etcd_migrate.py"),
    Refusal(OTHER_ETCD, "a member has NEW's name at another address", "the etcd member at https://10.0.0.23:2380 has the name s1 already",
            facts=lambda: etcd_reasons(adds=["s1"], removes=["m3", "m2"], members=(
                *etcd_facts().members, member(CLUSTER, "s3", name="s1")))),
    Refusal(OTHER_ETCD, "NEW's peer URL is a member already", "s1 (https://10.0.0.21:2380) is in etcd's member list",
            facts=lambda: etcd_reasons(adds=["s1"], removes=["m1", "m2"], members=(
                *etcd_facts().members, member(CLUSTER, "s1")))),
    Refusal(OLD_MISSING, "--replace OLD not in cluster.yaml", "ghost is not a host of the inventory",
            cli=_plan("migrate-masters", "--replace", "ghost=s1")),
    Refusal(OLD_MISSING, "--replace OLD not a master", "s2 is not a master",
            cli=_plan("migrate-masters", "--replace", "s2=s1")),
    Refusal(OLD_MISSING, "etcd migrate OLD not an etcd member", "w1 is not an etcd member",
            cli=_plan("etcd", "migrate", "--replace", "w1=s1")),
    Refusal(OLD_MISSING, "remove-master of a host that is not a master", "s1 is not a master",
            cli=_plan("remove-master", "s1")),
    Refusal(OLD_MISSING, "rolling-restart --host not in cluster.yaml", "not in the inventory: ghost",
            cli=_plan("rolling-restart", "--host", "ghost")),
    Refusal(OLD_MISSING, "repoint-nodes --hosts not in cluster.yaml", "ghost is not a host of the inventory",
            cli=_plan("repoint-nodes", "--server", "https://10.0.0.100:8443", "--hosts", "ghost")),
    Refusal(OLD_MISSING, "OLD in cluster.yaml but not in etcd's member list",
            "m3 (https://10.0.0.13:2380) is not in etcd's member list",
            facts=lambda: migrate_reasons("m3=s1", members=etcd_facts().members[:2]),
            live="tests/lab/test_etcd_migrate.py"),
    Refusal(SAN, "--retire-san while a ConfigMap names the old VIP",
            "--retire-san would take 10.0.0.100 out of the apiserver certs, yet it may still be in use "
            "(ConfigMap monitoring/targets names 10.0.0.100)",
            facts=lambda: _endpoint_reasons({"vip": "10.0.0.200", "retire_san": "true"},
                                            old_vip_users=("ConfigMap monitoring/targets names 10.0.0.100",)),
            live="tests/lab/test_change_endpoint.py (a ConfigMap naming the VIP made first)"),
    Refusal(SAN, "--retire-san while a node's kubeconfigs cannot be read", "w1 (its kubeconfigs could not be read",
            facts=lambda: _endpoint_reasons({"vip": "10.0.0.200", "retire_san": "true"},
                                            unreachable={"w1": "connection refused"}),
            live="tests/lab/test_change_endpoint.py (a worker's sshd stopped first)"),
)


@pytest.fixture(scope="module")
def touched() -> Iterator[list[str]]:
    with stubbed_hosts() as touched:
        yield touched


def refusal_of(case: Refusal, directory: Path, touched: list[str]) -> str:
    """What refuses the case: the command line's one line (no host touched), or the planner's reasons."""
    if case.facts is not None:
        return case.facts()
    outcome, message = run_case(Case(case.cli, good=False, files=(("case.yaml", case.inventory),)), directory, touched)
    assert outcome == REFUSED
    return message


@pytest.mark.parametrize("case", CASES, ids=[c.case for c in CASES])
def test_each_refusal(case: Refusal, tmp_path: Path, touched: list[str]):
    assert case.expected in refusal_of(case, tmp_path, touched)


def test_a_good_change_is_refused_by_none_of_them():
    """The made-up facts are a healthy cluster: without the fault each case adds, nothing refuses."""
    assert etcd_reasons(adds=["s1"], removes=["m1"]) == ""
    assert migrate_reasons("m1=s1,m2=s2") == ""
    assert add_master_reasons("s1") == ""
    assert _endpoint_reasons({"vip": "10.0.0.200", "retire_san": "true"}) == ""
    assert _endpoint_reasons({"vip": "10.0.0.200"}, parse_inventory(NO_NETWORK).cluster) == ""


def test_the_new_vip_s_vrid_skips_one_another_keepalived_instance_uses():
    facts = endpoint_facts(keepalived=FOREIGN_KEEPALIVED)
    request = parse_request(CLUSTER, {"vip": "10.0.0.200"})
    assert moved_vip(CLUSTER, request).vrid == 52
    plan = plan_endpoint({"vip": "10.0.0.200"}, facts)
    assert [v["vrid"] for v in plan.steps[0].arguments["vips"]] == [51, 53]  # type: ignore[index]


def test_each_check_over_facts_is_one_function_returning_a_reason_or_none():
    s1 = CLUSTER.host("s1")
    assert member_already(CLUSTER, s1, etcd_facts()) is None
    assert member_elsewhere(CLUSTER, s1, etcd_facts()) is None
    both = etcd_facts(new_hosts_running_etcd=frozenset({"s1"}), new_hosts_with_data=frozenset({"s1"}))
    assert member_elsewhere(CLUSTER, s1, both) == ("s1 runs an etcd that is not a member of this cluster: it is a "
                                                    "member of another cluster; stop it and move /var/lib/etcd away first")


def test_a_pure_refusal_lists_every_reason_in_one_line(tmp_path: Path, touched: list[str]):
    case = Refusal("", "", "", cli=_plan("change-endpoint", "--vip", "10.0.1.200", "--vrid", "51"), inventory=ONE_MASTER)
    message = refusal_of(case, tmp_path, touched)
    assert message.startswith("change-endpoint refused: ") and "\n" not in message
    for reason in ("VRID 51", "outside the hosts' subnet", "the only master"):
        assert reason in message
    with pytest.raises(InputError, match="'m1\\\\n': not a host name"):
        master_change(CLUSTER, "m1\n", adding=False)


def refusals_table(directory: Path, touched: list[str]) -> str:
    rows: dict[str, list[Refusal]] = {}
    for case in CASES:
        rows.setdefault(case.what, []).append(case)
    lines = ["| refusal | cases | refused | before any host, by the command line | over facts, by the planner "
             "| the lab test to show it live in (no such case yet) |", "|---|---|---|---|---|---|"]
    for what, cases in rows.items():
        refused = sum(c.expected in refusal_of(c, directory / f"{what}-{i}", touched) for i, c in enumerate(cases))
        pure = sum(c.facts is None for c in cases)
        live = "; ".join(dict.fromkeys(c.live.split(" (")[0] for c in cases if c.live)) or "-"
        lines.append(f"| {what} | {len(cases)} | {refused} | {pure} | {len(cases) - pure} | {live} |")
    return "\n".join(lines) + "\n"


def test_the_refusals_table_in_the_docs_is_what_the_cases_do(tmp_path: Path, touched: list[str]):
    assert_doc_table(RELIABILITY_MD, "tests/unit/test_refusals.py", refusals_table(tmp_path, touched))


def test_the_cases_cover_every_refusal_of_issue_8():
    assert [*dict.fromkeys(c.what for c in CASES)] == [
        DUPLICATES, VIP_USED, VIP_SUBNET, VRID, EVEN, LAST_MASTER, OTHER_ETCD, OLD_MISSING, SAN]
