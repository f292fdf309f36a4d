"""The plan simulator: every plan kubeha makes passes it; plans edited by hand to break a
rule are refused, naming the step. Pure, no hosts."""

from __future__ import annotations

from helpers.plans import endpoint_plan, facts_for, lab_cluster, migrate, plan_for, restart_plan, verdicts_of, without
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeha.operations.simulator import violations


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_generated_membership_plan_passes(data):
    masters = data.draw(st.sampled_from([3, 5]))
    cluster = lab_cluster(masters=masters, spares=3)
    olds = data.draw(st.lists(st.sampled_from([m.name for m in cluster.masters]), min_size=0, max_size=3, unique=True))
    news = data.draw(st.lists(st.sampled_from(["spare1", "spare2", "spare3"]), min_size=len(olds), max_size=len(olds),
                              unique=True))
    free = [s for s in ("spare1", "spare2", "spare3") if s not in news]
    extra = data.draw(st.lists(st.sampled_from(free), max_size=1, unique=True)) if free else []
    leader = data.draw(st.sampled_from([m.name for m in cluster.masters]))
    local = data.draw(st.booleans())  # stacked apiservers reading only their own member
    servers = {m.name: ("https://127.0.0.1:2379",) if local else tuple(cluster.etcd_client_urls())
               for m in cluster.masters}
    facts = facts_for(cluster, leader=leader, apiserver_etcd_servers=servers)
    adds, removes = [*news, *extra], olds
    if (masters + len(adds) - len(removes)) % 2 == 0 or not (adds or removes):
        return  # the planner refuses an even final size; nothing to change is not a plan
    plan = plan_for(cluster, adds=adds, removes=removes, facts=facts)
    verdicts = verdicts_of(cluster, plan, facts)
    assert violations(verdicts) == []
    final = verdicts[-1].after
    assert final.voters == {m.name for m in cluster.masters if m.name not in removes} | set(adds)
    assert final.learners == set() and final.leader in final.voters


def test_every_generated_rolling_restart_passes():
    for leader in ("master1", "master2", "master3"):
        cluster = lab_cluster()
        facts = facts_for(cluster, leader=leader)
        plan = restart_plan(cluster, "etcd,kube-apiserver,kube-controller-manager,kube-scheduler", leader_host=leader)
        verdicts = verdicts_of(cluster, plan, facts)
        assert violations(verdicts) == []
        # a 3-member etcd tolerates no second failure while one member restarts: said as warnings
        assert [v.step for v in verdicts if v.warnings] == [s.id for s in plan.steps if s.id.startswith("restart-etcd")]


def test_stopping_two_of_three_members_before_their_replacements_join_is_refused():
    cluster = lab_cluster()
    plan = plan_for(cluster, adds=["spare1", "spare2"], removes=["master2", "master3"])
    stops = tuple(s for s in plan.steps if s.kind == "etcd-stop-member")
    rest = tuple(s for s in plan.steps if s not in stops)
    broken = plan.model_copy(update={"steps": (rest[0], *stops, *rest[1:])})  # right after the snapshot
    found = violations(verdicts_of(cluster, broken))
    assert any(v.startswith("stop-member-master3: during: etcd has 1 healthy of 3 voters") for v in found), found


def test_removing_the_leader_without_moving_leadership_is_refused():
    cluster = lab_cluster()
    plan = plan_for(cluster, adds=["spare1"], removes=["master1"])  # master1 leads
    found = violations(verdicts_of(cluster, without(plan, "move-leader-off-master1")))
    assert any("remove-member-master1" in v and "leader master1 is removed" in v for v in found), found


def test_two_learners_at_once_are_refused():
    cluster = lab_cluster(spares=3)
    plan = plan_for(cluster, adds=["spare1", "spare2"], removes=["master2", "master3"])
    first_promote = next(s.id for s in plan.steps if s.kind == "etcd-promote-member")
    found = violations(verdicts_of(cluster, without(plan, first_promote)))
    assert any("2 learners" in v for v in found), found


def test_an_apiserver_left_reading_a_removed_member_is_refused():
    cluster = lab_cluster()
    facts = facts_for(cluster)  # kubeadm stacked: each apiserver reads its own member only
    plan = plan_for(cluster, adds=["spare2"], removes=["master2"], facts=facts)
    found = violations(verdicts_of(cluster, without(plan, "apiserver-etcd-servers"), facts))
    assert any("master2 reads etcd only from master2, no longer served" in v for v in found), found


def test_restarting_etcd_while_another_member_is_down_is_refused():
    cluster = lab_cluster()
    facts = facts_for(cluster, unhealthy=("master3: connection refused",))
    plan = restart_plan(cluster, "etcd", leader_host="master1")
    found = violations(verdicts_of(cluster, plan, facts))
    assert any("restart-etcd-master2" in v and "1 healthy of 3 voters" in v for v in found), found


def test_an_etcd_restart_moves_leadership_off_its_member_itself():
    # leadership may have come to the member since the plan was made: the restart moves it off
    cluster = lab_cluster()
    plan = restart_plan(cluster, "etcd", leader_host="master1")
    results = verdicts_of(cluster, without(plan, "move-leader-off-master1"))
    assert violations(results) == []
    assert results[-1].after.leader != "master1"


def test_a_client_left_naming_a_removed_member_when_the_plan_is_done_is_refused():
    cluster = lab_cluster()
    every = tuple(cluster.etcd_client_urls())  # kubeasz: each apiserver lists every member
    facts = facts_for(cluster, apiserver_etcd_servers={m.name: every for m in cluster.masters})
    plan = plan_for(cluster, adds=["spare2"], removes=["master2"], facts=facts)
    assert violations(verdicts_of(cluster, plan, facts)) == []
    final_pass = [s.id for s in plan.steps if s.kind == "apiserver-etcd-servers"]
    found = violations(verdicts_of(cluster, without(plan, *final_pass), facts))
    assert any("when the plan is done, master1 still names master2" in v for v in found), found


def test_the_verified_plan_shows_the_vip_holder_and_clients_naming_an_address_about_to_go():
    cluster = lab_cluster()
    verdicts = verdicts_of(cluster, endpoint_plan(cluster, {"vip": "10.0.0.200"}))
    assert violations(verdicts) == []
    served = next(v for v in verdicts if v.step == "serve-vip-10.0.0.200").describe()
    assert "VIP 10.0.0.100 on master1; VIP 10.0.0.200 on master1" in served
    assert "master1 without 10.0.0.200" in served  # no cert names the new VIP yet
    assert "served no more after a later step: 10.0.0.100 (ConfigMap kube-system/kube-proxy" in served
    assert "10.0.0.100" not in next(v for v in verdicts if v.step == "retire-vip-10.0.0.100").describe()


def test_the_vip_moves_to_a_staying_lb_host_before_its_holder_stops_keepalived():
    cluster = lab_cluster()
    verdicts = verdicts_of(cluster, migrate(cluster, "master1=spare1"))
    assert next(v for v in verdicts if v.step == "remove-lb-server-master1").after.vips == {"10.0.0.100": "master2"}
    assert violations(verdicts) == []
