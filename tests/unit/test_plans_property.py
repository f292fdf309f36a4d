"""Every plan kubeha makes, over random topologies and arguments, passes the plan simulator,
or its planner refuses it with a reason (one line, a KubehaError), never another exception.

Topologies: 1-5 masters, stacked etcd or 1-7 etcd hosts of their own, 0-3 LB hosts of their
own (else the masters hold the VIP), 0-50 workers, 3 spares, both layouts, with a VIP or
none; the leader anywhere, a member maybe down, the VIP on any LB host. Pure: no host."""

from __future__ import annotations

from dataclasses import dataclass

from helpers.plans import (
    api_facts_for, endpoint_plan, facts_for, master_plan, migrate, plan_for, repoint_for, restart_plan, topology,
    verdicts_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeha.errors import KubehaError
from kubeha.model import Cluster, Layout, Role
from kubeha.operations.components import RESTARTABLE
from kubeha.operations.etcd_plan import EtcdFacts
from kubeha.operations.nodes_plan import parse_request as parse_repoint_request
from kubeha.operations.simulator import ApiFacts, violations

# a few hundred cases per operation, 2,100 in all, under a minute; the same ones in every run (derandomized)
CASES = settings(max_examples=350, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class World:
    cluster: Cluster
    facts: EtcdFacts
    api: ApiFacts

    def names(self, role: Role | None = None) -> list[str]:
        return [h.name for h in self.cluster.hosts if (h.has(role) if role else not h.roles)]


@st.composite
def worlds(draw) -> World:
    stacked = draw(st.booleans())
    masters = draw(st.integers(1, 5))
    cluster = topology(masters=masters, etcd=masters if stacked else draw(st.integers(1, 7)), stacked=stacked,
                       lbs=draw(st.integers(0, 3)), workers=draw(st.integers(0, 50)),
                       layout=draw(st.sampled_from(list(Layout))), vip=draw(st.sampled_from([True, True, True, False])))
    members = [h.name for h in cluster.etcd_members]
    leader = draw(st.sampled_from(members))
    # a member down that etcd tolerates (without quorum to start with, no plan is safe)
    down = draw(st.sampled_from([None, *[m for m in members if m != leader and len(members) >= 3]]))
    local = stacked and draw(st.booleans())  # stacked apiservers reading their own member only, or every member
    servers = {m.name: ("https://127.0.0.1:2379",) if local else cluster.etcd_client_urls() for m in cluster.masters}
    facts = facts_for(cluster, leader=leader, apiserver_etcd_servers=servers,
                      unhealthy=(f"{down}: connection refused",) if down else ())
    holder = draw(st.sampled_from([h.name for h in cluster.lb_hosts])) if cluster.vip and cluster.lb_hosts else None
    return World(cluster, facts, api_facts_for(cluster, holder))


def some(draw, names: list[str], most: int) -> list[str]:
    return draw(st.lists(st.sampled_from(names), max_size=most, unique=True)) if names else []


def passes_or_is_refused(world: World, make) -> None:
    try:
        plan = make()
    except KubehaError as e:  # a refusal: one line that says why
        assert str(e) and "\n" not in str(e), repr(e)
        return
    found = violations(verdicts_of(world.cluster, plan, world.facts, world.api))
    assert found == [], (plan.operation, plan.arguments, [s.id for s in plan.steps], found)


@CASES
@given(worlds(), st.data())
def test_etcd_membership_changes(world, data):
    adds = some(data.draw, world.names(), 3)
    removes = some(data.draw, world.names(Role.ETCD), 3)
    if not adds and not removes:
        return  # the commands take at least one host
    passes_or_is_refused(world, lambda: plan_for(world.cluster, adds=adds, removes=removes, facts=world.facts))


@CASES
@given(worlds(), st.data())
def test_rolling_restarts(world, data):
    components = some(data.draw, list(RESTARTABLE), 4)
    hosts = some(data.draw, [h.name for h in world.cluster.hosts], 3)
    leader = next(m.name for m in world.facts.members if m.id == world.facts.leader_id)
    passes_or_is_refused(world, lambda: restart_plan(world.cluster, ",".join(components), ",".join(hosts),
                                                     leader_host=leader, unhealthy=world.facts.unhealthy))


@CASES
@given(worlds(), st.data())
def test_add_and_remove_master(world, data):
    adding = data.draw(st.booleans())
    name = data.draw(st.sampled_from(world.names() if adding else world.names(Role.MASTER)))
    passes_or_is_refused(world, lambda: master_plan(world.cluster, name, adding, world.facts, api=world.api))


@CASES
@given(worlds(), st.data())
def test_migrate_masters(world, data):
    olds = some(data.draw, world.names(Role.MASTER), 3)
    news = data.draw(st.permutations(world.names()))[:len(olds)]
    pairs = ",".join(f"{old}={new}" for old, new in zip(olds, news))
    passes_or_is_refused(world, lambda: migrate(world.cluster, pairs, world.facts, api=world.api))


@CASES
@given(worlds(), st.integers(101, 254), st.booleans())
def test_change_endpoint(world, last_octet, retire_san):
    arguments = {"vip": f"10.0.0.{last_octet}", "retire_san": str(retire_san)}
    passes_or_is_refused(world, lambda: endpoint_plan(world.cluster, arguments, world.api))


@CASES
@given(worlds(), st.data())
def test_repoint_nodes(world, data):
    cluster = world.cluster
    arguments = {"server": data.draw(st.sampled_from([cluster.endpoint, cluster.node_local_endpoint])),
                 "hosts": ",".join(some(data.draw, [h.name for h in cluster.hosts], 4)),
                 "batch": str(data.draw(st.integers(1, 10)))}
    passes_or_is_refused(world, lambda: repoint_for(cluster, world.api, parse_repoint_request(arguments), arguments))
