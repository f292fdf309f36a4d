"""Faults injected in the lab in the middle of an operation (issue 8, "Faults during an
operation"). Each case ends with the cluster serving through the VIP and the operation
completed, or stopped at a safe point with a clear message and finished by `kubeha resume`
once the fault is gone. Every fault is removed in a finally block: the lab is shared.

The operation is a rolling restart of kube-apiservers (about 30-40 s a master): it takes the
apiserver out of every haproxy and node-local nginx (nginx.conf checked with `nginx -t`,
written and backed up on each worker), writes the manifest's restart annotation (backed up
on the master), waits for the new process, and puts it back, so a fault can land on SSH, a
config check, a config write, a backup or etcd. Each case writes a record
(tests/helpers/fault_table.py); when the module ends it rewrites the table in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import pytest
from helpers.fault_table import FaultCase, write_docs, write_record
from helpers.operations import Run, kubeha_check, make_plan, resume_cli, run_plan
from helpers.wait import held_for, wait_for

from kubeha.access import ClusterAccess
from kubeha.cli.operations import save_plan
from kubeha.inventory import load_inventory
from kubeha.lab import Lab
from kubeha.model import Layout
from kubeha.operations.etcd_plan import live_member
from kubeha.operations.etcd_view import read_etcd_state
from kubeha.plan import Journal, Plan, Progress, StepOutcome

pytestmark = [pytest.mark.lab, pytest.mark.layouts(Layout.KUBEADM)]  # one lab; the faults are not layout-specific

KUBEHA = [sys.executable, "-m", "kubeha.cli"]
RESTART = "rolling-restart kube-apiserver"


@pytest.fixture(scope="module", autouse=True)
def table_in_the_docs():
    yield
    write_docs()


# ---- looking at the lab ------------------------------------------------------------------


def etcd_leader_and_vip_holder(lab: Lab, inventory_path: Path) -> tuple[str, str]:
    with ClusterAccess(load_inventory(inventory_path)) as access:
        cluster = access.cluster
        state = read_etcd_state(access.etcd())
        leader = next(h.name for h in cluster.masters
                      if (m := live_member(state.members, cluster, h)) is not None and m.id == state.leader_id)
    return leader, lab.vip_holders(lab.topology().cluster)[0]


def bystander(lab: Lab, inventory_path: Path) -> str:
    """A master that neither leads etcd nor holds the VIP (else one that does not hold the
    VIP): a fault there is only the fault, not also an election or a VIP handoff."""
    leader, holder = etcd_leader_and_vip_holder(lab, inventory_path)
    masters = [h.name for h in lab.topology().cluster.masters]
    return next((m for m in masters if m not in (leader, holder)), next(m for m in masters if m != holder))


def lb_configs(lab: Lab) -> dict[str, bytes]:
    """Every haproxy.cfg and node-local nginx.conf: a restart leaves them as they were."""
    cluster = lab.topology().cluster
    files = {h.name: "/etc/haproxy/haproxy.cfg" for h in cluster.lb_hosts}
    files |= {h.name: str(cluster.paths.node_proxy_conf) for h in cluster.workers}
    return {f"{host}:{path}": lab.paths.on_host(host, path).read_bytes() for host, path in files.items()}


def serving_through_the_vip(lab: Lab) -> bool:
    def ready() -> bool:
        with lab.api(lab.topology().cluster) as api:
            return api.get("/readyz").status_code == 200

    return bool(wait_for(ready, 60, "the API through the VIP", ignore=(httpx.HTTPError,)))


def listener_pid(lab: Lab, host: str, port: int) -> int:
    """The pid of the process listening on ``port`` on the lab host."""
    out = lab.on(host, ["ss", "-Hltnp", f"sport = :{port}"]).stdout
    return int(re.search(r"pid=(\d+)", out).group(1))


def etcd_healthy(inventory_path: Path) -> bool:
    with ClusterAccess(load_inventory(inventory_path)) as access:
        state = read_etcd_state(access.etcd())
    return bool(state.leader_id) and all(state.healthy(m) for m in state.members)


# ---- a case: the operation with a fault, judged --------------------------------------------


def clear_stop(message: str, operation_id: str) -> bool:
    """One line (a refusal: its step, one line per reason) that names the next command."""
    lines = message.splitlines()
    refusal = lines[0].startswith("step ") and " refused (" in lines[0]
    return (len(lines) == 1 or refusal) and f"kubeha resume {operation_id}" in message and "Traceback" not in message


class Case:
    """One fault injected into ``plan``: the runs it took, what stopped them, and the verdict
    recorded for docs/reliability.md."""

    def __init__(self, lab: Lab, inventory_path: Path, tmp_path: Path, fault: str, case: str, plan: Plan) -> None:
        self.lab, self.inventory_path, self.fault, self.case, self.plan = lab, inventory_path, fault, case, plan
        self.journal = tmp_path / "journal.sqlite"
        self.started = time.monotonic()
        self.lb_before = lb_configs(lab)
        self.stops: list[str] = []  # what each stopped run said
        self.lost: list[str] = []  # what was lost: etcd writes, journal records
        self.finished = False

    def run(self, *, resume: bool = False, on_progress=None) -> Run:
        """Apply (or resume) in this process with the probe; a stop is noted, not raised."""
        run = run_plan(self.plan, self.inventory_path, self.journal, raises=False, resume=resume,
                       on_progress=on_progress)
        if run.error is not None:
            self.stops.append(str(run.error))
        else:
            self.finished = True
        etcd = run.probe.etcd if run.probe is not None else None
        if etcd is None or etcd.lost is None:
            self.lost.append("the probe's etcd writes could not be read back")
        elif etcd.lost:
            self.lost.append(f"{len(etcd.lost)} acknowledged etcd writes")
        print(run)
        return run

    def resume(self) -> None:
        """`kubeha resume`, once the fault is gone."""
        done = resume_cli(self.plan.operation_id, self.inventory_path, self.journal)
        print(done.stdout, done.stderr, sep="\n")
        self.finished = done.returncode == 0

    def _said(self, message: str) -> str:
        """A stop's message for the record: its lines joined, this test's temporary dir as <tmp>."""
        return " / ".join(line.strip() for line in message.splitlines()).replace(str(self.journal.parent), "<tmp>")

    def judge(self, *, stopped: str = "stopped, then resumed", clear=clear_stop) -> FaultCase:
        """Write the record, then fail unless the case ended safe with nothing lost;
        ``clear(message, operation_id)`` judges what each stopped run said."""
        check = kubeha_check(self.inventory_path)
        with Journal(self.journal) as journal:
            attempts = journal.steps(self.plan.operation_id)
        unrecorded = [s.id for s in self.plan.steps
                      if not any(a.step_id == s.id and a.outcome in (StepOutcome.DONE, StepOutcome.SKIPPED_ALREADY_DONE)
                                 for a in attempts)]
        changed = [name for name, content in lb_configs(self.lab).items() if self.lb_before.get(name) != content]
        lost = self.lost + ([f"journal records of {', '.join(unrecorded)}"] if unrecorded else []) \
            + ([f"changed: {', '.join(changed)}"] if changed else [])
        safe = (self.finished and serving_through_the_vip(self.lab) and check.returncode == 0
                and all(clear(m, self.plan.operation_id) for m in self.stops))
        record = FaultCase(
            fault=self.fault, case=self.case, operation=RESTART, seconds=round(time.monotonic() - self.started, 1),
            outcome=(stopped if self.stops else "completed") if self.finished else "not finished",
            ended_safe=safe, nothing_lost=not lost, message=" / then: ".join(self._said(m) for m in self.stops),
            date=date.today().isoformat())
        write_record(record)
        assert safe and not lost, (record, lost, check.stdout + check.stderr)
        return record


# ---- the faults ------------------------------------------------------------------------------


def test_an_etcd_member_sigkilled_mid_restart(lab, inventory_path, tmp_path):
    leader, _ = etcd_leader_and_vip_holder(lab, inventory_path)
    targets = [m.name for m in lab.topology().cluster.masters if m.name != leader]
    case = Case(lab, inventory_path, tmp_path, "etcd-member-killed",
                "the etcd leader killed as the first drained restart begins",
                make_plan(inventory_path, "rolling-restart", {"component": "kube-apiserver", "host": ",".join(targets)}))
    killed: list[int] = []

    def kill_the_leader(progress: Progress) -> None:
        if progress.event == "applying" and not killed:
            killed.append(listener_pid(lab, leader, 2379))
            os.kill(killed[0], signal.SIGKILL)

    case.run(on_progress=kill_the_leader)
    assert killed
    # the kubelet starts it again: a new process, the cluster healthy
    wait_for(lambda: listener_pid(lab, leader, 2379) != killed[0] and etcd_healthy(inventory_path), 120,
             "the killed member to be back", ignore=(AttributeError, subprocess.CalledProcessError))
    if not case.finished:
        case.resume()
    case.judge()


def test_a_target_hosts_network_cut_mid_restart(lab, inventory_path, tmp_path):
    target = bystander(lab, inventory_path)
    case = Case(lab, inventory_path, tmp_path, "network-cut", "the target master's link down 2 s into its drained restart",
                make_plan(inventory_path, "rolling-restart", {"component": "kube-apiserver", "host": target}))
    cut = threading.Event()

    def cut_the_link() -> None:
        lab.on(target, ["ip", "link", "set", "eth0", "down"])
        cut.set()

    timer = threading.Timer(2.0, cut_the_link)  # the restart itself can take under 5 s

    def cut_soon(progress: Progress) -> None:
        if progress.event == "applying" and not timer.is_alive() and not cut.is_set():
            timer.start()

    try:
        case.run(on_progress=cut_soon)
    finally:
        timer.cancel()
        lab.on(target, ["ip", "link", "set", "eth0", "up"])
    assert cut.is_set()
    # the fault is gone once the network has settled: keepalived on the cut master took the
    # VIP while alone, and after the link is back no one holds it for moments, more than once
    # (resume refuses then): one holder for 3 s running
    cluster = lab.topology().cluster
    wait_for(held_for(lambda: len(lab.vip_holders(cluster)) == 1 and etcd_healthy(inventory_path), 3), 120,
             f"one VIP holder for 3 s and {target}'s etcd member back")
    if not case.finished:
        case.resume()
    case.judge()


def sshd_and_sessions(lab: Lab, host: str) -> list[int]:
    """Every sshd process of the lab host: the listener and each session's."""
    out = subprocess.run(["ip", "netns", "pids", lab.names.netns(host)], capture_output=True, text=True).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_ssh_refused_by_the_next_target(lab, inventory_path, tmp_path):
    second = bystander(lab, inventory_path)
    first = next(m.name for m in lab.topology().cluster.masters if m.name != second)
    case = Case(lab, inventory_path, tmp_path, "ssh-refused",
                "sshd and its sessions killed on the second master after the first restart",
                make_plan(inventory_path, "rolling-restart", {"component": "kube-apiserver", "host": f"{first},{second}"}))
    killed: list[int] = []

    def stop_sshd(progress: Progress) -> None:
        if progress.event == "done" and progress.step.id.endswith(first) and not killed:
            while sshd := sshd_and_sessions(lab, second):  # a session forking as it is killed: again
                for pid in sshd:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed.extend(sshd)
            print(f"killed sshd processes {killed} on {second}")

    try:
        case.run(on_progress=stop_sshd)
        assert killed
        assert subprocess.run(lab.ssh_command(second, ["true"]), capture_output=True, timeout=30).returncode != 0
    finally:
        if not sshd_and_sessions(lab, second):
            lab.on(second, ["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_config"])
    if not case.finished:
        case.resume()
    case.judge()


def filled_tmpfs(lab: Lab, host: str, directory: str, *, keep_content: bool) -> None:
    """A small tmpfs over ``directory`` on the host (with a copy of what was there, so the
    files still read the same), filled up: every write there fails with ENOSPC."""
    copy = f"/run/kubeha-fault-{directory.strip('/').replace('/', '-')}"
    script = f"""set -e
mkdir -p {directory} {copy}
{f'cp -a {directory}/. {copy}/' if keep_content else ':'}
mount -t tmpfs -o size=256k tmpfs {directory}
cp -a {copy}/. {directory}/
rm -rf {copy}
dd if=/dev/zero of={directory}/.fill bs=4k status=none 2>/dev/null || true"""
    lab.on(host, ["sh", "-c", script])


def unmount(lab: Lab, host: str, directory: str) -> None:
    lab.on(host, ["umount", directory], check=False)


def test_a_full_disk_or_a_rejected_config_stops_the_step_with_nothing_changed(lab, inventory_path, tmp_path,
                                                                              monkeypatch):
    # three faults, each landing later in the same step than the one before, so each resume
    # goes past where the previous one stopped: the rendered nginx.conf rejected by `nginx -t`
    # (the drain's first move), worker1's /etc/nginx full (the drain's writes), the target's
    # backup dir full (the manifest's backup, once the apiserver is out)
    target = bystander(lab, inventory_path)
    plan = make_plan(inventory_path, "rolling-restart", {"component": "kube-apiserver", "host": target})
    rejected = Case(lab, inventory_path, tmp_path, "config-rejected",
                    "the drain's nginx.conf rendered wrong, `nginx -t` rejects it on every worker", plan)
    config_full = Case(lab, inventory_path, tmp_path, "disk-full", "a worker's /etc/nginx full as the drain writes it",
                       plan)
    backup_full = Case(lab, inventory_path, tmp_path, "disk-full",
                       "the target master's backup dir full as its manifest is backed up", plan)

    with monkeypatch.context() as patched:
        patched.setattr("kubeha.lb.drain.render_node_proxy_conf", lambda *_, **__: "garbage here;\n")
        rejected.run()
    try:
        filled_tmpfs(lab, "worker1", "/etc/nginx", keep_content=True)
        config_full.run(resume=True)
    finally:
        unmount(lab, "worker1", "/etc/nginx")
    try:
        filled_tmpfs(lab, target, "/var/lib/kubeha/backups", keep_content=False)
        backup_full.run(resume=True)
    finally:
        unmount(lab, target, "/var/lib/kubeha/backups")
    backup_full.resume()
    for case, says in ((rejected, "nginx rejected"), (config_full, "No space left"), (backup_full, "No space left")):
        case.finished = backup_full.finished  # the last resume finished the operation all three stopped
        assert len(case.stops) == 1 and says in case.stops[0] and "(rolled back)" in case.stops[0], case.stops
        case.judge(stopped="stopped (rolled back, nothing left changed), then resumed")


def _cli(*args: str, journal: Path, inventory_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*KUBEHA, *args, "--yes", "--no-probe", "-i", str(inventory_path), "--journal", str(journal)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": "400"})


def _error_line(stderr: str) -> str:
    return next((line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")), "")


def test_the_journal_deleted_between_steps(lab, inventory_path, tmp_path):
    first, second = [m.name for m in lab.topology().cluster.masters][:2]
    plan = make_plan(inventory_path, "rolling-restart", {"component": "kube-apiserver", "host": f"{first},{second}"})
    saved = save_plan(plan, None, tmp_path / "journal.sqlite")  # where `kubeha plan` saves it
    during = Case(lab, inventory_path, tmp_path, "journal-deleted", "deleted by hand between the two restarts", plan)

    def delete_the_journal(progress: Progress) -> None:
        if progress.event == "done" and progress.step.id == plan.steps[0].id:
            during.journal.unlink()

    run = during.run(on_progress=delete_the_journal)
    assert "was deleted during the run: kubeha wrote it back" in str(run.error), run.error
    assert f"stopped before step {plan.steps[1].id}" in str(run.error)
    during.resume()
    during.judge()

    # deleted between runs: resume refuses (it cannot know what was done) and says how to go on
    after = Case(lab, inventory_path, tmp_path, "journal-deleted",
                 "deleted between runs; resume refused, the saved plan applied again", plan)
    after.journal.unlink()
    refused = resume_cli(plan.operation_id, inventory_path, after.journal)
    after.stops = [_error_line(refused.stderr)]
    assert refused.returncode == 1 and f"knows no operation {plan.operation_id}" in after.stops[0], refused.stderr
    again = _cli("apply", str(saved), journal=after.journal, inventory_path=inventory_path)
    out, err = again.communicate(timeout=600)
    print(out, err)
    after.finished = again.returncode == 0 and "(2 already done)" in out
    after.judge(stopped="resume refused; the saved plan applied again found both restarts done",
                clear=lambda message, _: "\n" not in message and f"kubeha apply {saved}" in message)


def test_two_runs_at_once_the_second_refused_by_the_cluster_lock(lab, inventory_path, tmp_path):
    first, second = [m.name for m in lab.topology().cluster.masters][:2]
    journals = {host: tmp_path / host / "journal.sqlite" for host in (first, second)}  # two operators' machines
    started, before = time.monotonic(), lb_configs(lab)
    runs = {host: _cli("rolling-restart", "--component", "kube-apiserver", "--host", host, journal=journals[host],
                       inventory_path=inventory_path) for host in (first, second)}
    ended = {host: run.communicate(timeout=600) for host, run in runs.items()}
    for host, (out, err) in ended.items():
        print(host, runs[host].returncode, out, err, sep="\n")
    (winner,) = [h for h, run in runs.items() if run.returncode == 0]
    (loser,) = [h for h, run in runs.items() if run.returncode != 0]
    said = _error_line(ended[loser][1])
    with Journal(journals[winner]) as won, Journal(journals[loser]) as lost:
        (winner_id,) = won.operation_ids()
        (loser_id,) = lost.operation_ids()
        plan = lost.plan(loser_id)
        assert lost.steps(loser_id) == [] and lost.runs(loser_id) == []  # refused before any step
    assert said.startswith(f"cluster is locked by operation {winner_id} (") and "\n" not in said, said
    assert said.endswith(f"then: kubeha resume {loser_id}"), said
    case = Case(lab, inventory_path, tmp_path / loser, "two-runs", "two rolling restarts started together", plan)
    case.started, case.lb_before, case.stops = started, before, [said]
    case.resume()  # the refused run's plan is in its journal
    case.judge(stopped="the second refused by the lock, then resumed once the first was done",
               clear=lambda message, _: "\n" not in message and f"locked by operation {winner_id}" in message
               and "wait for it" in message)
