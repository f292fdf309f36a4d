"""Running an operation on a lab the way `kubeha apply` does, with the probe, recording the
etcd member list at every step boundary (for "quorum never lost")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubeha.access import ClusterAccess
from kubeha.errors import KubehaError
from kubeha.etcd.quorum import quorum
from kubeha.inventory import load_inventory, parse_inventory
from kubeha.operations import operation
from kubeha.operations.etcd_view import EtcdState, read_etcd_state
from kubeha.plan import Journal, Plan, Progress, StepOutcome, apply, engine
from kubeha.plan.cluster_lock import cluster_lock_for
from kubeha.probe import ETCD_PATH, Probe, ProbeRecord, ProbeSummary


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
    error: KubehaError | None = None  # how the run stopped, when run_plan was told not to raise

    def __repr__(self) -> str:
        """Short, what matters first: pytest cuts a long repr of a failed test's argument in
        the middle, and CI shows only that."""
        failed: dict[str, int] = {}
        for line in self.failed:
            path, _, rest = line.partition(" ")
            error, _, during = rest.partition(" during ")
            key = f"{path} {error.split()[1].rstrip(':') if len(error.split()) > 1 else error} @{during}"
            failed[key] = failed.get(key, 0) + 1
        gaps = " ".join(f"{p.path}={p.longest_gap_ms:.0f}" for p in self.probe.paths) if self.probe else "-"
        return (f"Run(failed: {'; '.join(f'{n}x {k}' for k, n in failed.items()) or 'none'} | gaps ms: {gaps} "
                f"| error: {self.error})")

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


def run_plan(plan: Plan, inventory_path: Path, journal_path: Path, *, probe: bool = True,
             raises: bool = True, resume: bool = False, on_progress: Callable[[Progress], None] | None = None) -> Run:
    """Apply ``plan`` (``resume``: resume it from the journal) with the probe (VIP, LBs,
    node-local proxies, etcd writes); with ``raises=False`` a run that stops early is
    returned with its error. ``on_progress`` sees every engine event too (a test injecting
    a fault at a step)."""
    op = operation(plan.operation)
    inventory = load_inventory(inventory_path)
    run = Run(plan)
    with ClusterAccess(inventory, etcd_endpoints=op.etcd_endpoints(plan, inventory)) as access, \
            Journal(journal_path) as journal:
        watcher = access.etcd()

        started = time.monotonic()

        steps: list[tuple[float, str]] = []

        def progressed(progress: Progress) -> None:
            if on_progress is not None:
                on_progress(progress)
            if progress.step is not None:
                steps.append((time.time(), f"{progress.event} {progress.step.id}"))
            if progress.step is not None:  # a timeline on stdout (pytest -s) shows where time goes
                print(f"{time.monotonic() - started:7.1f} s  {progress.event:<22} {progress.step.id} {progress.message}")
            if progress.step is not None and progress.event in ("done", "skipped-already-done", "checking"):
                run.boundaries.append(boundary(progress.step.id, progress.event, read_etcd_state(watcher)))

        prober = Probe(access, node_proxies=True, etcd_writes=True,
                       skip_lb_hosts=op.retiring_lb_hosts(plan, inventory)) if probe else None
        if prober:
            prober.start()
        try:
            hooks = dict(cluster=access, cluster_lock=cluster_lock_for(access), on_progress=progressed)
            if resume:
                engine.resume(plan.operation_id, op.registry, op.view_factory(access, plan), journal, **hooks)
            else:
                apply(plan, op.registry, op.view_factory(access, plan), journal, **hooks)
        except KubehaError as e:
            if raises:
                raise
            run.error = e
        finally:
            if prober:
                run.probe = prober.stop()
                def during(at: float) -> str:
                    return next((what for t, what in reversed(steps) if t <= at), "before the first step")

                for record in prober.records:
                    if not record.ok:
                        run.failed.append(f"{record.path} {record.status} {record.error} during {during(record.ts)}")
                for path, gap, at, ending in _longest_gaps(prober.records):
                    print(f"longest gap of {path}: {gap * 1000:.0f} ms from {during(at)}; "
                          f"{ending.latency_ms:.0f} ms for the request that ended it{' (a retry)' if ending.retry else ''}")
    return run


def _longest_gaps(records) -> list[tuple[str, float, float, ProbeRecord]]:
    """Each path's longest time between two successes, when it began, and the success that
    ended it (a slow answer or a retry: where time goes)."""
    done: dict[str, list[ProbeRecord]] = {}
    for record in records:
        if record.ok:
            done.setdefault(record.path, []).append(record)
    gaps = []
    for path, oks in sorted(done.items()):
        oks.sort(key=lambda r: r.done)
        if len(oks) > 1:
            gap, at, ending = max(((b.done - a.done, a.done, b) for a, b in zip(oks, oks[1:])), key=lambda g: g[0])
            gaps.append((path, gap, at, ending))
    return gaps


def assert_no_outage(run: Run, *, longest_gap_ms: float | None = None, vip_retry: bool = False) -> None:
    """No failed request through the VIP (with ``vip_retry``: none after its one retry, as
    part 4 allows for the master operations); none through any path after its one retry; no
    acknowledged etcd write lost; quorum at every boundary; at most one learner."""
    summary = run.probe
    assert summary is not None
    for path in summary.paths:
        print(path)
    print(summary.etcd)
    for failed in run.failed:
        print("failed:", failed)
    vip = next(p for p in summary.paths if p.path == "vip")
    assert (vip.failures_after_retry if vip_retry else vip.failures) == 0, (vip, run.failed)
    # the message leads with what failed and how (CI shows only the start of a long one)
    assert all(p.failures_after_retry == 0 for p in summary.paths), (
        [p for p in summary.paths if p.failures_after_retry], run.failed[:6])
    if longest_gap_ms is not None:  # every HTTP path: the VIP, each LB, each node-local proxy
        bounded = [p for p in summary.paths if p.path != ETCD_PATH]
        assert all(p.longest_gap_ms < longest_gap_ms for p in bounded), summary.paths
    assert summary.etcd is not None and summary.etcd.lost == (), summary.etcd
    assert run.quorum_kept() == [], run.quorum_kept()
    assert max((b.learners for b in run.boundaries), default=0) <= 1


def workloads(inventory_path: Path) -> dict:
    """What an operation must leave alone on the nodes: the pods on workers (with their uids:
    a pod deleted and made again has a new one), NodeNotReady events, each Node's Ready."""
    import json

    from kubernetes import client as k8s

    with ClusterAccess(load_inventory(inventory_path)) as access:
        core = k8s.CoreV1Api(access.kube())
        workers = {h.kube_node_name for h in access.cluster.workers}
        pods = json.loads(core.list_pod_for_all_namespaces(_preload_content=False).data)["items"]
        events = json.loads(core.list_event_for_all_namespaces(_preload_content=False).data)["items"]
        nodes = json.loads(core.list_node(_preload_content=False).data)["items"]
    return {
        "pods": sorted((p["metadata"]["name"], p["metadata"]["uid"]) for p in pods
                       if p.get("spec", {}).get("nodeName") in workers),
        "not_ready_events": sum(1 for e in events if e.get("reason") == "NodeNotReady"),
        "ready": {n["metadata"]["name"]: next((c["status"] for c in n.get("status", {}).get("conditions", [])
                                               if c["type"] == "Ready"), None) for n in nodes},
    }


def kubeha_check(inventory_path: Path) -> subprocess.CompletedProcess[str]:
    return _cli("check", "-i", str(inventory_path), timeout=120)


def assert_audit_finds_no_divergence(operation_id: str, inventory_path: Path, journal: Path) -> None:
    """`kubeha audit`: the cluster went, step by step, the way the plan simulator says."""
    audited = _cli("audit", operation_id, "-i", str(inventory_path), "--journal", str(journal), timeout=120)
    assert audited.returncode == 0 and "no divergence" in audited.stdout, audited.stdout + audited.stderr


def assert_nodes_untouched_and_check_passes(before: dict, inventory_path: Path) -> None:
    """``before`` (``workloads``) still holds and `kubeha check` passes."""
    after = workloads(inventory_path)
    assert after["pods"] == before["pods"]  # no pod on a worker deleted or made again
    assert after["not_ready_events"] == before["not_ready_events"]
    assert set(after["ready"].values()) == {"True"}, after["ready"]
    check = kubeha_check(inventory_path)
    assert check.returncode == 0, check.stdout + check.stderr


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


def resume_cli(operation_id: str, inventory: Path, journal: Path) -> subprocess.CompletedProcess[str]:
    return _cli("resume", operation_id, "--yes", "--no-probe", "-i", str(inventory), "--journal", str(journal))


def rollback_cli(operation_id: str, inventory: Path, journal: Path) -> subprocess.CompletedProcess[str]:
    return _cli("rollback", operation_id, "--yes", "--no-probe", "-i", str(inventory), "--journal", str(journal))


def step_records(journal_path: Path, operation_id: str, step_id: str) -> list:
    """The journal's records of one step (none while the journal does not exist yet)."""
    if not journal_path.exists():
        return []
    with Journal(journal_path) as journal:
        return [r for r in journal.steps(operation_id) if r.step_id == step_id]


def apply_killed_at(plan_file: Path, operation_id: str, step: str, inventory: Path, journal: Path,
                    after_start: float | None = None) -> bool:
    """`kubeha apply` SIGKILLed as soon as the journal shows ``step`` finished, or (with
    ``after_start``) that many seconds after it shows the step started; False if the run
    ended first."""
    process = subprocess.Popen([*CLI, "apply", str(plan_file), "--yes", "--no-probe", "-i", str(inventory),
                                "--journal", str(journal)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while process.poll() is None:
            records = step_records(journal, operation_id, step)
            if after_start is None:
                due = any(r.outcome in (StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE) for r in records)
            elif due := bool(records):
                time.sleep(after_start)
            if due:
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
    resumed = resume_cli(plan.operation_id, inventory, journal)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = fingerprint(inventory, hosts)
    assert after == expected_fingerprint(plan, expected_from), (boundary, after)
    return after
