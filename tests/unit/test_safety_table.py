"""docs/safety.md's table, made by this test: each rule of the plan simulator, how many plans
kubeha generates were checked against it (all passed), how many plans written by hand to
break it were refused. `KUBEHA_WRITE_DOCS=1 pytest tests/unit/test_safety_table.py` writes
the file; otherwise the test fails when the file says anything else than it finds."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

from helpers.plans import (
    api_facts_for, endpoint_plan, facts_for, lab_cluster, master_plan, migrate, plan_for, restart_plan, topology,
    verdicts_of, without,
)

from kubeha.model import Layout
from kubeha.operations.simulator import violations
from kubeha.plan import Plan, Step

SAFETY_MD = Path(__file__).parents[2] / "docs" / "safety.md"

# (rule, what a violation message of it says)
RULES = [
    ("etcd keeps a healthy voting majority, during and after every step", "below the quorum"),
    ("at most one learner at a time", "learners ("),
    ("the leader's member never stops while it leads", "is down: move leadership off it first"),
    ("the leader is never removed: leadership moves off first", "is removed without leadership moved"),
    ("at least one apiserver ready behind the load balancers", "no apiserver is ready behind"),
    ("every apiserver (and calico) reads at least one served member", "reads etcd only from"),
    ("when the plan is done, no client names a removed member", "when the plan is done"),
    ("the VIP always has a holder", "has no holder"),
    ("an apiserver's cert names every address its clients use", "serves a cert without"),
    ("a node's kubelet and kube-proxy (and every other client of the API) name an address that is served",
     "which nothing serves"),
]


def generated_plans():
    """Every etcd membership change on 3 and 5 masters (up to 3 out, as many in, a spare
    more where the size would be even), with each leader, stacked apiservers reading their
    own member or every member; rolling restarts with each leader; migrate-masters of 1 to
    3 masters on both layouts."""
    for masters in (3, 5):
        cluster = lab_cluster(masters=masters, spares=3)
        names = [m.name for m in cluster.masters]
        for out in range(0, 4):
            for olds in itertools.combinations(names[:3], out):
                news = ["spare1", "spare2", "spare3"][:out]
                adds = news if (masters - out + len(news)) % 2 else [*news, "spare3"] if out < 3 else None
                if adds is None or not (adds or olds) or len(set(adds)) != len(adds):
                    continue
                for leader, local in itertools.product(names, (True, False)):
                    servers = {m: ("https://127.0.0.1:2379",) if local else tuple(cluster.etcd_client_urls())
                               for m in names}
                    facts = facts_for(cluster, leader=leader, apiserver_etcd_servers=servers)
                    yield cluster, plan_for(cluster, adds=adds, removes=list(olds), facts=facts), facts
    cluster = lab_cluster()
    for leader in ("master1", "master2", "master3"):
        facts = facts_for(cluster, leader=leader)
        for components in ("etcd", "kube-apiserver", "etcd,kube-apiserver,kube-controller-manager,kube-scheduler"):
            yield cluster, restart_plan(cluster, components, leader_host=leader), facts
    for layout in (Layout.KUBEADM, Layout.KUBEASZ):
        cluster = lab_cluster(layout)
        for leader in ("master1", "master2", "master3"):
            facts = facts_for(cluster, leader=leader)
            for pairs in ("master1=spare1", "master2=spare2,master3=spare3",
                          "master1=spare1,master2=spare2,master3=spare3"):
                yield cluster, migrate(cluster, pairs, facts), facts
            yield cluster, master_plan(cluster, "spare1", True, facts), facts
            four = lab_cluster(layout, masters=4)  # one master fewer still leaves 3 members
            yield four, master_plan(four, leader, False, facts_for(four, leader=leader)), facts_for(four, leader=leader)
        for lbs, retire_san in itertools.product((0, 2), (False, True)):  # the masters hold the VIP, or LB hosts
            moved = topology(masters=3, etcd=3, stacked=True, lbs=lbs, workers=2, layout=layout)
            yield moved, endpoint_plan(moved, {"vip": "10.0.0.200", "retire_san": str(retire_san)}), facts_for(
                moved, leader="master1")


def _moved(plan: Plan, step_id: str, before: str) -> Plan:
    """``plan`` with step ``step_id`` moved to just before step ``before``."""
    moving = next(s for s in plan.steps if s.id == step_id)
    rest = [s for s in plan.steps if s.id != step_id]
    at = next(i for i, s in enumerate(rest) if s.id == before)
    return plan.model_copy(update={"steps": (*rest[:at], moving, *rest[at:])})


def _stops_first(plan: Plan) -> Plan:
    """The old members stopped right after the snapshot, before their replacements join."""
    stops = tuple(s for s in plan.steps if s.kind == "etcd-stop-member")
    rest = tuple(s for s in plan.steps if s not in stops)
    return plan.model_copy(update={"steps": (rest[0], *stops, *rest[1:])})


def _out_of_rotation(cluster) -> Plan:
    """Every apiserver taken out of the load balancers, one after another."""
    base = restart_plan(cluster, "kube-apiserver")
    steps = tuple(Step(id=f"out-of-rotation-{m.name}", kind="lb-rotation", title=f"{m.name} out", hosts=(m.name,),
                       arguments={"host": m.name, "into": False}) for m in cluster.masters)
    return base.model_copy(update={"steps": steps})


def _lbs_stopped_first(plan: Plan) -> Plan:
    """``plan`` with a first step making every LB host stop being one (as removing a master does)."""
    stops = tuple(Step(id=f"stop-lb-{m}", kind="lb-server", title=f"{m} no LB host", hosts=(m,),
                       arguments={"host": m, "roles": []}) for m in ("master1", "master2", "master3"))
    return plan.model_copy(update={"steps": (*stops, *plan.steps)})


def _direct_worker(cluster):
    return api_facts_for(cluster, worker1=("https://10.0.0.12:6443",))


def hand_made() -> list[tuple[int, Callable[[], tuple]]]:
    """(the rule it breaks, a builder of (cluster, plan, facts))."""
    three, four = lab_cluster(), lab_cluster(masters=4)
    every = {m.name: tuple(three.etcd_client_urls()) for m in three.masters}
    return [
        (0, lambda: (three, _stops_first(plan_for(three, adds=["spare1", "spare2"], removes=["master2", "master3"])),
                     facts_for(three))),
        (0, lambda: (three, restart_plan(three, "etcd", leader_host="master1"),
                     facts_for(three, unhealthy=("master3: connection refused",)))),
        (1, lambda: (three, without(plan_for(three, adds=["spare1", "spare2"], removes=["master2", "master3"]),
                                     "promote-member-spare1"), facts_for(three))),
        (2, lambda: (three, _moved(plan_for(three, adds=["spare1"], removes=["master1"]), "stop-member-master1",
                                   "move-leader-off-master1"), facts_for(three))),
        (3, lambda: (three, without(plan_for(three, adds=["spare1"], removes=["master1"]),
                                     "move-leader-off-master1"), facts_for(three))),
        (4, lambda: (three, _out_of_rotation(three), facts_for(three))),
        (5, lambda: (three, without(plan_for(three, adds=["spare2"], removes=["master2"]), "apiserver-etcd-servers"),
                     facts_for(three))),
        (6, lambda: (three, without(plan_for(three, adds=["spare2"], removes=["master2"],
                                              facts=facts_for(three, apiserver_etcd_servers=every)),
                                     "apiserver-etcd-servers"),
                     facts_for(three, apiserver_etcd_servers=every))),
        # the new masters never made LB hosts: the last old one stops keepalived with no heir for the VIP
        (7, lambda: (three, without(migrate(three, "master1=spare1,master2=spare2,master3=spare3"),
                                    *[f"add-lb-server-spare{i}" for i in (1, 2, 3)]), facts_for(three))),
        # the new VIP served, the old one retired, nothing holding either: every LB host stopped first
        (7, lambda: (three, _lbs_stopped_first(endpoint_plan(three, {"vip": "10.0.0.200"})), facts_for(three))),
        # master2 restarted without its cert reissued: the clients moved to the new VIP reach it too
        (8, lambda: (three, without(endpoint_plan(three, {"vip": "10.0.0.200"}), "apiserver-cert-master2"),
                     facts_for(three))),
        # the old VIP kept out of the certs before its clients moved off it
        (8, lambda: (three, _moved(_moved(endpoint_plan(three, {"vip": "10.0.0.200", "retire_san": "true"}),
                                          "apiserver-cert-master1-without-old", "update-inventory-new-vip"),
                                   "restart-kube-apiserver-master1-without-old", "update-inventory-new-vip"),
                     facts_for(three))),
        # the old VIP retired while the masters' kubelets still name it
        (9, lambda: (three, without(endpoint_plan(three, {"vip": "10.0.0.200"}), "node-kubeconfig-server"),
                     facts_for(three))),
        # a worker naming master2 itself, not repointed before master2 goes
        (9, lambda: (four, without(master_plan(four, "master2", False, api=_direct_worker(four)),
                                   "node-kubeconfig-server"), facts_for(four), _direct_worker(four))),
    ]


def safety_table() -> str:
    checked = 0
    for cluster, plan, facts in generated_plans():
        found = violations(verdicts_of(cluster, plan, facts))
        assert found == [], (plan.operation, [s.id for s in plan.steps], found)
        checked += 1
    refused = [0] * len(RULES)
    for rule, build in hand_made():
        cluster, plan, facts, *api = build()
        found = violations(verdicts_of(cluster, plan, facts, *api))
        assert any(RULES[rule][1] in v for v in found), (RULES[rule][0], found)
        refused[rule] += 1
    assert all(refused), [name for (name, _), n in zip(RULES, refused) if not n]  # each rule is shown broken
    lines = ["| rule | generated plans checked, all passed | hand-made violations refused |", "|---|---|---|"]
    lines += [f"| {name} | {checked} | {refused[i]} |" for i, (name, _) in enumerate(RULES)]
    return "\n".join(lines) + "\n"


def test_the_safety_table_in_the_docs_is_what_the_simulator_does():
    table = safety_table()
    text = SAFETY_MD.read_text() if SAFETY_MD.exists() else ""
    start, end = "<!-- table: tests/unit/test_safety_table.py -->\n", "<!-- end of table -->\n"
    if os.environ.get("KUBEHA_WRITE_DOCS") == "1":
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        SAFETY_MD.write_text(before + start + table + end + after)
        text = SAFETY_MD.read_text()
    assert start + table + end in text, "docs/safety.md is out of date: KUBEHA_WRITE_DOCS=1 pytest " \
                                        "tests/unit/test_safety_table.py writes it"
