"""Planning etcd membership changes and the checks that guard each step: pure, no hosts."""

from __future__ import annotations

import pytest
from helpers.plans import facts_for, lab_cluster, member, plan_for, topology

from kubeha.errors import InputError
from kubeha.etcd.gateway import EtcdMember, EtcdStatus
from kubeha.model import Cluster, EtcdTopology, Host, Layout
from kubeha.operations.calico import calicoctl_endpoints, with_calicoctl_endpoints
from kubeha.operations.etcd import registry
from kubeha.plan import StepContext
from kubeha.operations.etcd_plan import (
    cluster_after, etcd_servers_after, membership_change, parse_pairs, refusals,
)
from kubeha.operations.etcd_view import (
    ClusterView, EtcdState, caught_up, etcd_healthy, lb_spare, majority_after, no_other_learner, not_leader, vip_held,
)
from kubeha.plan import Plan, PlanError, Step


def status(m: EtcdMember, leader: EtcdMember, raft_index: int = 100, version: str = "3.4.23") -> EtcdStatus:
    return EtcdStatus(endpoint=m.client_urls[0] if m.client_urls else "", member_id=m.id, leader=leader.id,
                      raft_index=raft_index, raft_term=2, db_size=1, version=version, is_learner=m.is_learner)


MIGRATE = dict(adds=["spare1", "spare2", "spare3"], removes=["master1", "master2", "master3"])


def test_pairs_parse_and_bad_items_are_refused():
    assert parse_pairs("master1=spare1, master2=spare2") == [("master1", "spare1"), ("master2", "spare2")]
    for bad in ("master1", "master1=", "=spare1", "a=b,,"):
        with pytest.raises(InputError, match="OLD=NEW"):
            parse_pairs(bad)


def test_bad_names_are_refused_all_at_once_before_any_host_is_asked():
    with pytest.raises(InputError) as e:
        membership_change(lab_cluster(), adds=["spare1", "nosuch", "master2"], removes=["spare2", "spare1"])
    text = str(e.value)
    assert "nosuch is not a host" in text and "master2 is an etcd member already" in text
    assert "spare2 is not an etcd member" in text and "spare1 is named more than once" in text


def test_the_cluster_after_a_migration_has_external_etcd_on_the_new_hosts():
    cluster = lab_cluster()
    after = cluster_after(cluster, membership_change(cluster, **MIGRATE))
    assert [h.name for h in after.etcd_members] == ["spare1", "spare2", "spare3"]
    assert [h.name for h in after.masters] == ["master1", "master2", "master3"]
    assert after.etcd_topology is EtcdTopology.EXTERNAL


def test_etcd_servers_after_follows_the_members():
    cluster = lab_cluster()
    m1 = cluster.host("master1")
    before = cluster.etcd_members
    after = [cluster.host(n) for n in ("spare1", "spare2", "spare3")]
    new_urls = ("https://10.0.0.21:2379", "https://10.0.0.22:2379", "https://10.0.0.23:2379")
    # kubeadm stacked: the local member leaves, so every new member is listed
    assert etcd_servers_after(["https://127.0.0.1:2379"], m1, before, after) == new_urls
    # every member listed: every member after
    every = [f"https://10.0.0.{i}:2379" for i in (11, 12, 13)]
    assert etcd_servers_after(every, m1, before, after) == new_urls
    # the local member stays: nothing changes
    assert etcd_servers_after(["https://127.0.0.1:2379"], m1, before, [*before, after[0]]) == ("https://127.0.0.1:2379",)
    # one of two listed members leaves: the other is kept
    assert etcd_servers_after(every[:2], m1, before, [before[1], before[2], after[0]]) == (every[1],)


def _join(i: int) -> list[str]:
    return [f"{verb}-member-spare{i}" for verb in ("add", "start", "promote")]


def _leave(i: int) -> list[str]:
    return [f"{verb}-master{i}" for verb in ("move-leader-off", "remove-member", "stop-member")]


def url(*last_octets: int) -> list[str]:
    return [f"https://10.0.0.{i}:2379" for i in last_octets]


def test_a_stacked_migration_goes_pair_by_pair_repointing_each_apiserver_before_its_member_leaves():
    cluster = lab_cluster()
    plan = plan_for(cluster, **MIGRATE, facts=facts_for(cluster, leader="master2"))
    ids = [s.id for s in plan.steps]
    # voters 3 -> 4 -> 3 per pair; the leader's pair last
    assert ids == ["snapshot",
                   *_join(1), "repoint-apiserver-master1-off-master1", *_leave(1),
                   *_join(3), "repoint-apiserver-master3-off-master3", *_leave(3),
                   *_join(2), "repoint-apiserver-master2-off-master2", *_leave(2),
                   "repoint-apiserver-master1", "repoint-apiserver-master3", "update-inventory"]
    registry.validate(plan)
    assert Plan.from_json(plan.to_json()) == plan
    first = plan.step("repoint-apiserver-master1-off-master1")
    assert first.arguments["etcd_servers"] == url(12, 13, 21)
    assert first.arguments["accepted"] == [url(12, 13, 21), url(21, 22, 23)]
    assert plan.step("repoint-apiserver-master2-off-master2").arguments["etcd_servers"] == url(21, 22, 23)
    assert plan.step("remove-member-master2").reversible is False


def test_apiservers_listing_every_member_are_repointed_once_when_their_last_member_leaves():
    cluster = lab_cluster(Layout.KUBEASZ)
    every = {m.name: tuple(url(11, 12, 13)) for m in cluster.masters}
    plan = plan_for(cluster, **MIGRATE, facts=facts_for(cluster, apiserver_etcd_servers=every))
    repoints = [s for s in plan.steps if s.kind == "apiserver-etcd-servers"]
    assert [s.id for s in repoints] == [f"repoint-apiserver-master{i}-off-master1" for i in (1, 2, 3)]
    assert all(s.arguments["etcd_servers"] == url(21, 22, 23) for s in repoints)
    assert [s.id for s in plan.steps].index("repoint-apiserver-master1-off-master1") > \
        [s.id for s in plan.steps].index("promote-member-spare3")


def test_etcd_before_3_4_adds_voters_without_learners_or_promotion():
    cluster = lab_cluster()
    plan = plan_for(cluster, adds=["spare1", "spare2"], facts=facts_for(cluster, version="3.3.25"))
    assert not [s for s in plan.steps if s.kind == "etcd-promote-member"]
    add = plan.step("add-member-spare1")
    assert add.arguments["learner"] is False and "etcd: a healthy majority of voters remains after the step" in add.safety_checks


def test_unsafe_changes_are_refused_with_every_reason():
    cluster = lab_cluster()
    m1, m2 = member(cluster.host("master1")), member(cluster.host("master2"))
    sick = facts_for(cluster, unhealthy=("master3: connection refused",))
    with pytest.raises(PlanError, match="master3: connection refused"):
        plan_for(cluster, **MIGRATE, facts=sick)
    reasons = refusals(cluster, membership_change(cluster, removes=["master1", "master2"]), facts_for(cluster))
    assert any("tolerate no failure" in r for r in reasons)
    reasons = refusals(cluster, membership_change(cluster, adds=["spare1"]), facts_for(cluster))
    assert any("leave 4 members" in r for r in reasons)
    learner = facts_for(cluster, members=(m1, m2, member(cluster.host("spare3"), learner=True)))
    reasons = refusals(cluster, membership_change(cluster, adds=["spare1", "spare2"]), learner)
    assert any("learner spare3 exists" in r for r in reasons)
    reasons = refusals(cluster, membership_change(cluster, **MIGRATE),
                       facts_for(cluster, members=(m1, m2), new_hosts_with_data=frozenset({"spare2"})))
    assert any("master3" in r and "not in etcd's member list" in r for r in reasons)
    assert any("spare2 already holds etcd data" in r for r in reasons)


# ---- checks on synthetic views ------------------------------------------------------------


class _Backends:
    def __init__(self, haproxy, node_proxies=None):
        self.haproxy = haproxy
        self.node_proxies = node_proxies or {}

    def ready_servers(self, lb):
        return {s for s, state in self.haproxy[lb].items() if state == "UP"}


def view(cluster: Cluster, members, leader, *, down=(), backends=None, holders=("master1",), progress=None):
    statuses = {}
    for m in members:
        if m.name in down or not m.client_urls:
            statuses[m.id] = "connection refused"
        else:
            statuses[m.id] = status(m, leader, raft_index=(progress or {}).get(m.name, 100))
    return ClusterView(cluster, EtcdState(tuple(members), statuses), lambda: backends or _Backends({}),
                       lambda: tuple(holders))


def step(kind: str, host: Host, **arguments) -> Step:
    return Step(id="s", kind=kind, title="t", arguments={"host": host.name, "peer_url": f"https://{host.address}:2380",
                                                         **arguments})


def test_checks_judge_quorum_learners_leadership_and_catch_up():
    cluster = lab_cluster()
    m1, m2, m3 = (member(cluster.host(f"master{i}")) for i in (1, 2, 3))
    s1 = cluster.host("spare1")
    healthy = view(cluster, [m1, m2, m3], m1)
    assert etcd_healthy(healthy, step("etcd-snapshot", s1)) is None
    one_down = view(cluster, [m1, m2, m3], m1, down=("master3",))
    assert "master3" in etcd_healthy(one_down, step("etcd-snapshot", s1))
    # removing a member while another is down leaves 1 healthy of 2: refused
    assert "below the quorum" in majority_after(one_down, step("etcd-remove-member", cluster.host("master2")))
    assert "is the leader" in not_leader(healthy, step("etcd-remove-member", cluster.host("master1")))
    assert not_leader(healthy, step("etcd-remove-member", cluster.host("master2"))) is None
    learner = member(s1, learner=True)
    with_learner = view(cluster, [m1, m2, m3, learner], m1, progress={"spare1": 50})
    assert no_other_learner(with_learner, step("etcd-start-member", s1)) is None
    assert "learner spare1" in no_other_learner(with_learner, step("etcd-add-member", cluster.host("spare2")))
    assert "50%" in caught_up(with_learner, step("etcd-promote-member", s1))
    caught = view(cluster, [m1, m2, m3, learner], m1, progress={"spare1": 95})
    assert caught_up(caught, step("etcd-promote-member", s1)) is None
    # a voter added to 3 with one down: 2 healthy of 4 is below 3
    assert majority_after(one_down, step("etcd-add-member", s1, learner=False)) is not None
    assert majority_after(one_down, step("etcd-add-member", s1, learner=True)) is None


def test_checks_judge_the_load_balancers_and_the_vip():
    cluster = lab_cluster()
    m1 = member(cluster.host("master1"))
    target = step("apiserver-etcd-servers", cluster.host("master1"))
    spare = _Backends({"master1": {"master1": "UP", "master2": "UP"}}, {"worker1": {"master1": True, "master2": True}})
    assert lb_spare(view(cluster, [m1], m1, backends=spare), target) is None
    bare = _Backends({"master1": {"master1": "UP", "master2": "MAINT"}}, {"worker1": {"master1": True, "master2": False}})
    reason = lb_spare(view(cluster, [m1], m1, backends=bare), target)
    assert "master1" in reason and "worker1" in reason
    assert vip_held(view(cluster, [m1], m1), target) is None
    assert "10.0.0.100" in vip_held(view(cluster, [m1], m1, holders=()), target)


def test_calico_is_repointed_with_the_members_and_its_config_file_rewritten_in_place():
    cluster = lab_cluster()
    plan = plan_for(cluster, **MIGRATE, facts=facts_for(
        cluster, calico_endpoints=tuple(url(11, 12, 13)), calico_configmap=True, calico_hosts=("master1",)))
    calico = [s for s in plan.steps if s.kind == "calico-etcd-endpoints"]
    assert [s.id for s in calico] == ["repoint-calico-off-master1"]  # master1 leads: its pair is last
    assert calico[0].arguments["etcd_servers"] == url(21, 22, 23)
    assert calico[0].arguments["previous"] == url(11, 12, 13)
    text = 'spec:\n  datastoreType: "etcdv3"\n  etcdEndpoints: "https://10.0.0.11:2379,https://10.0.0.12:2379"\n  etcdKeyFile: k\n'
    assert calicoctl_endpoints(text) == ("https://10.0.0.11:2379", "https://10.0.0.12:2379")
    rewritten = with_calicoctl_endpoints(text, url(21, 22))
    assert rewritten == text.replace("10.0.0.11", "10.0.0.21").replace("10.0.0.12", "10.0.0.22")


def test_members_added_beside_stacked_ones_make_etcd_external():
    cluster = lab_cluster()
    after = cluster_after(cluster, membership_change(cluster, adds=["spare1", "spare2"]))
    assert after.etcd_topology is EtcdTopology.EXTERNAL
    back = cluster_after(after, membership_change(after, removes=["spare1", "spare2"]))
    assert back.etcd_topology is EtcdTopology.STACKED


def test_a_repoint_of_a_master_a_later_step_retired_counts_as_done():
    """A resumed migrate-masters walks the plan from the start: the repoint of an apiserver
    whose master was replaced since is done (asking its host would find no apiserver)."""
    cluster = lab_cluster(Layout.KUBEASZ)
    facts = facts_for(cluster, apiserver_etcd_servers={m.name: tuple(cluster.etcd_client_urls()) for m in cluster.masters})
    plan = plan_for(cluster, adds=["spare1"], removes=["master1"], facts=facts)
    step = next(s for s in plan.steps if s.kind == "apiserver-etcd-servers" and s.arguments["host"] == "master1")
    retired = cluster.model_copy(update={"hosts": tuple(h.model_copy(update={"roles": frozenset()}) if h.name == "master1"
                                                         else h for h in cluster.hosts)})

    class Access:  # no host may be asked: the inventory alone decides
        cluster = retired

    ctx = StepContext(plan=plan, step=step, view=None, cluster=Access())
    assert registry.kind("apiserver-etcd-servers").is_done(ctx)


def test_a_change_that_restarts_the_only_apiserver_is_refused():
    cluster = topology(masters=1, etcd=3, stacked=False, lbs=0, workers=1)
    facts = facts_for(cluster, apiserver_etcd_servers={"master1": cluster.etcd_client_urls()})
    with pytest.raises(PlanError, match="the apiserver on master1, the only one, must restart.*add a master first"):
        plan_for(cluster, adds=["spare1"], removes=["etcd1"], facts=facts)
