"""Planning add-master and remove-master: pure, no hosts."""

from __future__ import annotations

import pytest
from helpers.plans import facts_for, lab_cluster, master_plan as plan, member, migrate, topology

from kubeha.errors import InputError
from kubeha.model import Host, Layout, Role
from kubeha.operations.masters import registry
from kubeha.operations.masters_plan import (
    master_change, retarget, with_roles,
)
from kubeha.operations.simulator import model_from_facts, simulate, violations
from kubeha.plan import PlanError


def four_masters(layout=Layout.KUBEADM):
    cluster = lab_cluster(layout)
    return with_roles(cluster, "spare1", ["etcd", "master"])


def test_a_new_stacked_master_gets_files_lb_kubelet_etcd_then_apiserver_then_rotation():
    p = plan(lab_cluster(), "spare1", True)
    assert [s.id for s in p.steps] == [
        "snapshot", "copy-master-files-spare1", "add-lb-server-spare1", "start-kubelet-spare1",
        "add-member-spare1", "start-member-spare1", "promote-member-spare1",
        "start-kube-apiserver-spare1", "into-rotation-spare1", "start-kube-controller-manager-spare1",
        "start-kube-scheduler-spare1", "update-inventory"]
    registry.validate(p)
    # its etcd member runs as a master's (a static pod on kubeadm); the other steps carry the roles too
    assert p.step("start-member-spare1").arguments["roles"] == ["etcd", "master"]
    assert p.step("copy-master-files-spare1").arguments["source"] == "master1"
    # a kubeadm stacked apiserver reads its own member, as the source's does
    assert p.step("start-kube-apiserver-spare1").arguments["etcd_servers"] == ["https://127.0.0.1:2379"]


def test_an_apiserver_naming_every_member_names_the_new_one_too():
    cluster = lab_cluster(Layout.KUBEASZ)
    urls = tuple(f"https://{h.address}:2379" for h in cluster.etcd_members)
    p = plan(cluster, "spare1", True, facts_for(cluster, apiserver_etcd_servers={m.name: urls for m in cluster.masters}))
    assert p.step("start-kube-apiserver-spare1").arguments["etcd_servers"] == [*urls, "https://10.0.0.21:2379"]
    # the running apiservers learn of the new member too, one at a time, once the new one serves
    ids = [s.id for s in p.steps]
    assert ids[ids.index("into-rotation-spare1") + 1:][:3] == [
        "repoint-apiserver-master1", "repoint-apiserver-master2", "repoint-apiserver-master3"]


def test_the_others_are_repointed_off_a_leaving_master_while_it_still_serves():
    """With two masters, the one staying restarts while the leaving one is still in rotation."""
    cluster = topology(masters=2, etcd=3, stacked=False, lbs=0, workers=1)
    facts = facts_for(cluster, apiserver_etcd_servers={m.name: cluster.etcd_client_urls() for m in cluster.masters})
    stacked = topology(masters=2, etcd=0, stacked=True, lbs=0, workers=1)
    stacked_facts = facts_for(stacked, apiserver_etcd_servers={
        m.name: stacked.etcd_client_urls() for m in stacked.masters})
    p = plan(stacked, "master1", False, stacked_facts)
    ids = [s.id for s in p.steps]
    assert ids.index("repoint-apiserver-master2") < ids.index("out-of-rotation-master1")
    assert p.step("repoint-apiserver-master2").arguments["etcd_servers"] == ["https://10.0.1.2:2379"]
    for c, f, name in ((cluster, facts, "master1"), (stacked, stacked_facts, "master2")):
        assert violations(simulate(plan(c, name, False, f), c, model_from_facts(c, f))) == []


def test_removing_a_master_goes_out_of_rotation_first_and_its_node_last():
    cluster = four_masters()
    p = plan(cluster, "master2", False, facts_for(cluster))
    ids = [s.id for s in p.steps]
    assert ids == [
        "snapshot", "out-of-rotation-master2", "stop-kube-scheduler-master2", "stop-kube-controller-manager-master2",
        "stop-kube-apiserver-master2", "move-leader-off-master2", "remove-member-master2", "stop-member-master2",
        "remove-lb-server-master2", "stop-kubelet-master2", "remove-master-files-master2", "update-inventory"]
    registry.validate(p)
    assert p.step("stop-kubelet-master2").reversible is False


def test_add_then_remove_keep_every_safety_rule_in_the_simulator():
    cluster = lab_cluster()
    facts = facts_for(cluster)
    added = simulate(plan(cluster, "spare1", True, facts), cluster, model_from_facts(cluster, facts))
    assert violations(added) == []
    assert "spare1" in added[-1].after.in_lbs and "spare1" in added[-1].after.voters
    bigger = four_masters()
    facts = facts_for(bigger)
    removed = simulate(plan(bigger, "master1", False, facts), bigger, model_from_facts(bigger, facts))
    assert violations(removed) == []
    assert "master1" not in removed[-1].after.voters | removed[-1].after.in_lbs


def test_refusals_name_every_reason():
    with pytest.raises(InputError, match="master1 is a master already"):
        master_change(lab_cluster(), "master1", True)
    with pytest.raises(InputError, match="spare1 is not a master"):
        master_change(lab_cluster(), "spare1", False)
    with pytest.raises(InputError, match="nosuch is not a host"):
        master_change(lab_cluster(), "nosuch", True)
    # 3 stacked members to 2: no failure to spare
    with pytest.raises(PlanError, match="keep at least 3"):
        plan(lab_cluster(), "master3", False)
    single = lab_cluster(masters=1)
    with pytest.raises(InputError, match="master1 is the last master"):  # refused before any host is asked
        plan(single, "master1", False, facts_for(single))
    with pytest.raises(PlanError, match="kube-scheduler on master2 runs with --leader-elect=false"):
        plan(lab_cluster(), "spare1", True, leader_elect={"master2/kube-scheduler": "false"})
    sick = lab_cluster()
    with pytest.raises(PlanError) as e:
        plan(sick, "spare1", True, facts_for(sick, unreachable={"spare1": "connection refused"},
                                            members=(*[member(h) for h in sick.etcd_members],
                                                     member(sick.host("spare2"), learner=True))))
    assert "spare1 is not reachable" in str(e.value) and "learner spare2" in str(e.value)


def test_a_source_file_is_retargeted_at_the_new_host_by_whole_words():
    source = Host(name="master1", address="10.0.0.11", roles=frozenset({Role.MASTER}))
    new = Host(name="spare1", address="10.0.0.21")
    text = "--advertise-address=10.0.0.11 https://10.0.0.11:6443 10.0.0.110 master1 master10 system:node:master1"
    assert retarget(text, source, new) == (
        "--advertise-address=10.0.0.21 https://10.0.0.21:6443 10.0.0.110 spare1 master10 system:node:spare1")


def test_migrate_masters_adds_each_new_master_then_removes_its_old_one_leader_last():
    cluster = lab_cluster()
    p = migrate(cluster, "master1=spare1,master2=spare2,master3=spare3", facts_for(cluster, leader="master1"))
    registry.validate(p)
    ids = [s.id for s in p.steps]
    assert len(ids) == len(set(ids))
    parts = [s.id.removeprefix("update-inventory-") for s in p.steps if s.kind == "inventory-update"]
    # master1's member leads: its pair goes last
    assert parts == ["add-spare2", "remove-master2", "add-spare3", "remove-master3", "add-spare1", "remove-master1"]
    assert ids.index("start-kube-apiserver-spare2") < ids.index("out-of-rotation-master2")
    assert ids.index("promote-member-spare2") < ids.index("remove-member-master2")
    # each rewrite starts from the one before; a later one is accepted for an earlier one (resume)
    inventories = [s for s in p.steps if s.kind == "inventory-update"]
    assert inventories[0].changes[0].before == "sha256:a"
    for before, after in zip(inventories, inventories[1:]):
        assert after.changes[0].before == before.arguments["digest"]
    assert inventories[0].arguments["accepted"] == [s.arguments["digest"] for s in inventories]
    assert "master1=" in inventories[-1].arguments["content"] and "spare1=etcd,master" in inventories[-1].arguments["content"]
    # the new members' --initial-cluster named the old ones at their first start: restarted naming only the new ones
    restarts = [s for s in p.steps if s.kind == "restart-component"]
    assert [s.arguments["host"] for s in restarts] == ["spare1", "spare2", "spare3"]
    assert restarts[0].arguments["flags"] == {"initial-cluster": ",".join(
        f"spare{i}=https://10.0.0.2{i}:2380" for i in (1, 2, 3))}
    assert all(s.arguments["drain"] for s in restarts)  # a stacked apiserver reads its own member
    # a member that stays names the old ones still: restarted too, after the new ones
    partial = migrate(cluster, "master2=spare2", facts_for(cluster, leader="master1"))
    restarts = [s for s in partial.steps if s.kind == "restart-component"]
    assert [s.arguments["host"] for s in restarts] == ["spare2", "master1", "master3"]
    assert {s.arguments["flags"]["initial-cluster"] for s in restarts} == {",".join(
        f"{name}=https://{address}:2380" for name, address in
        (("master1", "10.0.0.11"), ("master3", "10.0.0.13"), ("spare2", "10.0.0.22")))}
    # a later master is copied from a master of the cluster as it is then
    assert p.step("copy-master-files-spare3").arguments["source"] in {"master1", "master3", "spare2"}


def test_migrate_masters_keeps_every_safety_rule_in_the_simulator():
    cluster = lab_cluster()
    facts = facts_for(cluster)
    results = simulate(migrate(cluster, "master1=spare1,master2=spare2,master3=spare3", facts), cluster,
                       model_from_facts(cluster, facts))
    assert violations(results) == []
    assert results[-1].after.voters == {"spare1", "spare2", "spare3"}
    assert results[-1].after.in_lbs == {"spare1", "spare2", "spare3"}


def test_migrate_masters_repoints_apiservers_naming_every_member_and_accepts_later_lists():
    cluster = lab_cluster(Layout.KUBEASZ)
    urls = tuple(f"https://{h.address}:2379" for h in cluster.etcd_members)
    facts = facts_for(cluster, apiserver_etcd_servers={m.name: urls for m in cluster.masters})
    p = migrate(cluster, "master2=spare1,master3=spare2", facts, )
    registry.validate(p)
    repoints = [s for s in p.steps if s.kind == "apiserver-etcd-servers" and s.arguments["host"] == "master1"]
    assert len(repoints) >= 2
    assert repoints[0].arguments["accepted"] == [s.arguments["etcd_servers"] for s in repoints]
    final = repoints[-1].arguments["etcd_servers"]
    assert final == ["https://10.0.0.11:2379", "https://10.0.0.21:2379", "https://10.0.0.22:2379"]
    # an old master's apiserver, repointed off the first pair's old member, is stopped for good
    # later: a resumed run that finds it stopped has nothing to repoint
    ids = [s.id for s in p.steps]
    leaving = [s for s in p.steps if s.kind == "apiserver-etcd-servers" and s.arguments["host"] == "master3"]
    assert leaving and all(s.arguments["stopped_by"] == "stop-kube-apiserver-master3" for s in leaving)
    assert all(ids.index(s.id) < ids.index("stop-kube-apiserver-master3") for s in leaving)
    assert not any("stopped_by" in s.arguments for s in repoints)


def test_migrate_masters_restarts_an_apiserver_only_to_take_it_off_a_leaving_member():
    # kubeasz: every apiserver names every member. add-master repoints each at the new member;
    # within a migration that restart is left out, as the removal that follows repoints it anyway
    cluster = lab_cluster(Layout.KUBEASZ)
    urls = tuple(f"https://{h.address}:2379" for h in cluster.etcd_members)
    facts = facts_for(cluster, apiserver_etcd_servers={m.name: urls for m in cluster.masters})
    p = migrate(cluster, "master1=spare1,master2=spare2,master3=spare3", facts)
    registry.validate(p)
    ids = [s.id for s in p.steps]
    repoints = [s for s in p.steps if s.kind == "apiserver-etcd-servers"]
    # 3 per removal: the apiservers that name the leaving member and keep serving
    assert len(repoints) == 9
    for s in repoints:
        leaving = next(step.arguments["host"] for step in p.steps[ids.index(s.id):] if step.kind == "etcd-remove-member")
        assert any(c.before and f"{cluster.host(leaving).address}:" in c.before for c in s.changes)
    # the change shows the list the apiserver has then: the old members, not the joined one
    # (master1 leads etcd: its pair goes last, master2's first)
    first = next(s for s in repoints if s.arguments["host"] == "master1")
    assert first.changes[0].before == ",".join(urls)
    assert first.arguments["etcd_servers"] == ["https://10.0.0.11:2379", "https://10.0.0.13:2379", "https://10.0.0.22:2379"]
    finals = {s.arguments["host"]: s.arguments["etcd_servers"] for s in repoints}
    assert {finals[f"spare{i}"] == ["https://10.0.0.21:2379", "https://10.0.0.22:2379", "https://10.0.0.23:2379"]
            for i in (1, 2)} == {True}
    results = simulate(p, cluster, model_from_facts(cluster, facts))
    assert violations(results) == []
    assert results[-1].after.readers["spare3"] == {"spare1", "spare2", "spare3"}


def test_migrate_masters_refuses_bad_pairs_before_asking_a_host():
    with pytest.raises(InputError) as e:
        migrate(lab_cluster(), "spare1=spare2,master1=master2,master3=nosuch,master3=spare3")
    for reason in ("master3 is named more than once", "nosuch is not a host", "spare1 is not a master",
                   "master2 is a master already"):
        assert reason in str(e.value)
    with pytest.raises(PlanError, match="kube-controller-manager on master1 runs with --leader-elect=false"):
        migrate(lab_cluster(), "master1=spare1", leader_elect={"master1/kube-controller-manager": "false"})


def test_an_address_is_named_only_as_a_whole_address():
    from kubeha.kube import names_an_address
    assert names_an_address('{"ip": "10.0.0.11"}', "10.0.0.11")
    assert names_an_address("https://10.0.0.11:2379", "10.0.0.11")
    assert not names_an_address("10.0.0.110 110.0.0.11 10.0.0.11.5", "10.0.0.11")
