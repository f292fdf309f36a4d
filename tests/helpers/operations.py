"""Running an operation on a lab the way `kubeha apply` does, with the probe, recording the
etcd member list at every step boundary (for "quorum never lost")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubeha.access import ClusterAccess
from kubeha.etcd.quorum import quorum
from kubeha.inventory import load_inventory, parse_inventory
from kubeha.operations import operation
from kubeha.operations.etcd_view import EtcdState, read_etcd_state
from kubeha.plan import Journal, Plan, Progress, StepOutcome, apply
from kubeha.plan.cluster_lock import cluster_lock_for
from kubeha.probe import Probe, ProbeSummary


@dataclass
class Boundary:
    step: str
    event: str
    voters: int
    healthy_voters: int
    learners: int
    leader: int


@dataclass
class Run:
    plan: Plan
    boundaries: list[Boundary] = field(default_factory=list)
    probe: ProbeSummary | None = None
    failed: list[str] = field(default_factory=list)  # each failed probe request, with the step it fell in

    def quorum_kept(self) -> list[Boundary]:
        """The boundaries where quorum was not kept (expect none)."""
        return [b for b in self.boundaries if not b.leader or b.healthy_voters < quorum(b.voters)]


def boundary(step: str, event: str, state: EtcdState) -> Boundary:
    voters = state.voters
    return Boundary(step, event, len(voters), sum(1 for m in voters if state.healthy(m)),
                    sum(1 for m in state.members if m.is_learner), state.leader_id)


def make_plan(inventory_path: Path, name: str, arguments: dict[str, str]) -> Plan:
    inventory = load_inventory(inventory_path)
    with ClusterAccess(inventory) as access:
        return operation(name).make_plan(access, inventory, inventory_path, arguments)


def run_plan(plan: Plan, inventory_path: Path, journal_path: Path, *, probe: bool = True) -> Run:
    """Apply ``plan`` with the probe (VIP, LBs, node-local proxies, etcd writes)."""
    op = operation(plan.operation)
    inventory = load_inventory(inventory_path)
    run = Run(plan)
    with ClusterAccess(inventory, etcd_endpoints=op.etcd_endpoints(plan, inventory)) as access, \
            Journal(journal_path) as journal:
        watcher = access.etcd()

        started = time.monotonic()

        steps: list[tuple[float, str]] = []

        def on_progress(progress: Progress) -> None:
            if progress.step is not None:
                steps.append((time.time(), f"{progress.event} {progress.step.id}"))
            if progress.step is not None:  # a timeline on stdout (pytest -s) shows where time goes
                print(f"{time.monotonic() - started:7.1f} s  {progress.event:<22} {progress.step.id} {progress.message}")
            if progress.step is not None and progress.event in ("done", "skipped-already-done", "checking"):
                run.boundaries.append(boundary(progress.step.id, progress.event, read_etcd_state(watcher)))

        prober = Probe(access, node_proxies=True, etcd_writes=True) if probe else None
        if prober:
            prober.start()
        try:
            apply(plan, op.registry, op.view_factory(access, plan), journal, cluster=access,
                  cluster_lock=cluster_lock_for(access), on_progress=on_progress)
        finally:
            if prober:
                run.probe = prober.stop()
                for record in prober.records:
                    if not record.ok:
                        during = next((what for at, what in reversed(steps) if at <= record.ts), "before the first step")
                        run.failed.append(f"{record.path} {record.status} {record.error} during {during}")
    return run


def final_lists(plan: Plan, before: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Each consumer's etcd list once ``plan`` is done: its last repoint's, else as before."""
    lists = dict(before)
    for step in plan.steps:
        if step.kind == "apiserver-etcd-servers":
            lists[str(step.arguments["host"])] = tuple(step.arguments["etcd_servers"])
        elif step.kind == "calico-etcd-endpoints":
            lists["calico"] = tuple(step.arguments["etcd_servers"])
    return lists


def fingerprint(inventory_path: Path, hosts: list[str]) -> dict:
    """What an etcd operation leaves behind, to compare runs: members, every consumer's list
    (file and running process), where etcd runs, the load balancers, the VIP, the inventory."""
    from kubeha.lb.drain import backend_states
    from kubeha.operations import apiserver, etcd_hosts
    from kubeha.operations.calico import read_calico_config
    from kubeha.operations.etcd_view import vip_holders

    inventory = load_inventory(inventory_path)
    all_hosts = [h for h in inventory.cluster.hosts if h.name in hosts]
    with ClusterAccess(inventory) as access:
        cluster = access.cluster
        state = read_etcd_state(access.etcd())
        lists = {}
        for master in cluster.masters:
            file = (apiserver.file_flags(access, cluster, master) or {}).get("etcd-servers", "")
            running = (apiserver.running_flags(access, cluster, master) or {}).get("etcd-servers", "")
            lists[master.name] = (tuple(file.split(",")), file == running)
        states = backend_states(access, cluster)
        return {
            "members": sorted((m.name, m.is_learner) for m in state.members),
            "healthy": all(state.healthy(m) for m in state.members) and bool(state.leader_id),
            "apiservers": lists,
            "calico": read_calico_config(access).endpoints,
            "etcd_runs_on": sorted(h.name for h in all_hosts if etcd_hosts.member_process_running(access, cluster, h)),
            "in_every_lb": sorted(m.name for m in cluster.masters if states.in_everywhere(m.name)),
            "vip_holders": len(vip_holders(access, cluster)),
            "inventory": inventory_path.read_text(),
        }


def expected_fingerprint(plan: Plan, before: dict) -> dict:
    """The fingerprint an uninterrupted run of ``plan`` leaves, from the one before it."""
    inventory = str(next(s for s in plan.steps if s.kind == "inventory-update").arguments["content"])
    members = sorted(h.name for h in parse_inventory(inventory).cluster.etcd_members)
    lists = final_lists(plan, {name: value[0] for name, value in before["apiservers"].items()}
                       | ({"calico": before["calico"]} if before["calico"] else {}))
    return {
        **before,
        "members": [(name, False) for name in members],
        "healthy": True,
        "apiservers": {name: (lists[name], True) for name in before["apiservers"]},
        "calico": lists.get("calico"),
        "etcd_runs_on": members,
        "inventory": inventory,
    }


# ---- a kubeha process killed at a step boundary, then `kubeha resume` -----------------

CLI = [sys.executable, "-m", "kubeha.cli"]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _finished(journal_path: Path, operation_id: str, step_id: str) -> bool:
    if not journal_path.exists():
        return False
    with Journal(journal_path) as journal:
        return any(r.step_id == step_id and r.outcome in (StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE)
                   for r in journal.steps(operation_id))


def apply_killed_at(plan_file: Path, operation_id: str, boundary: str, inventory: Path, journal: Path) -> bool:
    """`kubeha apply` SIGKILLed as soon as the journal shows ``boundary`` finished; False if
    the run ended first."""
    process = subprocess.Popen([*CLI, "apply", str(plan_file), "--yes", "--no-probe", "-i", str(inventory),
                                "--journal", str(journal)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while process.poll() is None:
            if _finished(journal, operation_id, boundary):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def migrate_killed_and_resumed(lab, inventory: Path, tmp_path: Path, replace: str, boundary: str,
                               expected_from: dict) -> dict:
    """A migration by `kubeha apply`, SIGKILLed once ``boundary`` is done, finished by
    `kubeha resume`; asserts the cluster ends as the plan says; returns its fingerprint."""
    hosts = [h.name for h in lab.topology().hosts]
    tmp_path.mkdir()
    plan = make_plan(inventory, "etcd-migrate", {"replace": replace})
    plan_file = tmp_path / f"{plan.operation_id}.json"
    plan_file.write_text(plan.to_json())
    journal = tmp_path / "journal.sqlite"
    assert boundary in [s.id for s in plan.steps], [s.id for s in plan.steps]
    assert apply_killed_at(plan_file, plan.operation_id, boundary, inventory, journal), f"the run ended before {boundary}"
    resumed = _cli("resume", plan.operation_id, "--yes", "--no-probe", "-i", str(inventory), "--journal", str(journal))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = fingerprint(inventory, hosts)
    assert after == expected_fingerprint(plan, expected_from), (boundary, after)
    return after
