"""`kubeha apply` SIGKILLed at one point of an operation (once a step finished, or in the
middle of a step that changes a host), `kubeha resume` finishing it, and what the cluster
then looks like, to compare with an uninterrupted run's end (issue 8's crash sweep)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.fault_table import RELIABILITY_MD, docs_with_table, read_json_records
from helpers.operations import CLI, apply_killed_at, fingerprint, make_plan, resume_cli

from kubeha.inventory import load_inventory
from kubeha.model import Cluster
from kubeha.operations.components import RESTART_ANNOTATION
from kubeha.plan import Journal, Plan


@dataclass(frozen=True)
class CrashPoint:
    step: str
    during: bool  # SIGKILLed in the middle of the step; else once it finished

    def __str__(self) -> str:
        return f"{'during' if self.during else 'after'} {self.step}"


def crash_points(plan: Plan) -> list[CrashPoint]:
    """In plan order: the middle of every step that changes a host, and every step boundary
    but the last (after it nothing is left to resume)."""
    points = []
    for step in plan.steps:
        if any(change.host for change in step.changes):
            points.append(CrashPoint(step.id, True))
        if step is not plan.steps[-1]:
            points.append(CrashPoint(step.id, False))
    return points


def chosen(points: list, variable: str = "KUBEHA_SWEEP_POINTS") -> list:
    """The slice of ``points`` the variable names as START:STOP (all by default)."""
    start, _, stop = os.environ.get(variable, ":").partition(":")
    return points[slice(int(start) if start else None, int(stop) if stop else None)]


def step_seconds(journal: Path, operation_id: str) -> dict[str, float]:
    """How long each step of a finished run took."""
    with Journal(journal) as records:
        return {r.step_id: (r.finished - r.started).total_seconds() for r in records.steps(operation_id)
                if r.finished is not None}


_STATE_SCRIPT = r"""
for f in {configs}; do printf '%s ' "$f"; if [ -e "$f" ]; then sha256sum < "$f" | cut -c1-16; else echo absent; fi; done
for f in {kubeconfigs}; do [ -e "$f" ] && printf '%s %s\n' "$f" "$(grep -h 'server:' "$f" | tr -d ' ')"; done
[ -e {cert} ] && printf 'sans %s\n' "$(openssl x509 -noout -ext subjectAltName -in {cert} | tail -n +2 | tr -d ' ')"
for f in {units}; do [ -e "$f" ] && printf '%s %s\n' "$f" "$(grep -vF {restart} "$f" | sha256sum | cut -c1-16)"; done
for u in kubelet haproxy keepalived nginx kube-lb etcd kube-apiserver kube-controller-manager kube-scheduler; do
  printf 'unit %s %s\n' "$u" "$(systemctl is-active "$u" 2>/dev/null)"; done
printf 'apiserver listening %s\n' "$(ss -Hltn 'sport = :6443' | wc -l)"
true
"""


def host_state(lab, cluster: Cluster, host: str) -> list[str]:
    """What one host has of the control plane: its LB configs' digests, what each kubeconfig
    names, its apiserver cert's SANs, its manifests' and units' digests (without the restart
    annotation, which names the run), which services run."""
    p = cluster.paths
    units = [f"{p.manifests_dir}/*.yaml"] if p.manifests_dir else []
    units += [f"{p.units_dir}/{u}.service" for u in ("etcd", "kube-apiserver", "kube-controller-manager",
                                                    "kube-scheduler")]
    script = _STATE_SCRIPT.format(
        configs=" ".join(shlex.quote(str(f)) for f in (p.haproxy_cfg, p.keepalived_conf, p.node_proxy_conf)),
        kubeconfigs=" ".join(shlex.quote(str(f)) for f in (
            p.admin_kubeconfig, p.kubelet_kubeconfig, p.kube_proxy_kubeconfig, p.controller_manager_kubeconfig,
            p.scheduler_kubeconfig)),
        cert=shlex.quote(str(p.apiserver.cert)), units=" ".join(units), restart=shlex.quote(RESTART_ANNOTATION))
    return lab.on(host, ["sh", "-c", script]).stdout.splitlines()


def cluster_state(lab, inventory: Path) -> dict:
    """The etcd operation's fingerprint (members, every apiserver's --etcd-servers, the LBs,
    the VIP holders, the inventory) with every host's state and how many hold each VIP."""
    cluster = load_inventory(inventory).cluster
    hosts = [h.name for h in cluster.hosts]
    state = fingerprint(inventory, hosts)
    state["hosts"] = {name: host_state(lab, cluster, name) for name in hosts}
    # how many hosts hold each VIP (one); not which: that is keepalived's election, which a
    # new VIP's first moments decide (its hosts have equal priorities)
    addresses = [lab.on(name, ["ip", "-4", "-o", "addr", "show"]).stdout for name in hosts]
    state["vips"] = {str(vip.address): sum(f"inet {vip.address}/" in shown for shown in addresses)
                     for vip in cluster.vips}
    return state


def differences(got: dict, want: dict) -> list[str]:
    """Where two cluster states differ, said shortly."""
    found = []
    for key in sorted(got.keys() | want.keys()):
        if key == "hosts":
            for host in sorted(got[key].keys() | want[key].keys()):
                a, b = set(got[key].get(host, [])), set(want[key].get(host, []))
                if a != b:
                    found.append(f"{host}: has {sorted(a - b)}, not {sorted(b - a)}")
        elif got.get(key) != want.get(key):
            found.append(f"{key}: {got.get(key)!r}, not {want.get(key)!r}")
    return found


def run_whole(lab, inventory: Path, workdir: Path, operation: str, arguments: dict[str, str]) -> tuple[dict, dict]:
    """An uninterrupted `kubeha apply`: the state it leaves and each step's duration."""
    workdir.mkdir(parents=True)
    plan = make_plan(inventory, operation, arguments)
    plan_file = workdir / f"{plan.operation_id}.json"
    plan_file.write_text(plan.to_json())
    journal = workdir / "journal.sqlite"
    done = subprocess.run([*CLI, "apply", str(plan_file), "--yes", "--no-probe", "-i", str(inventory),
                           "--journal", str(journal)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    return cluster_state(lab, inventory), step_seconds(journal, plan.operation_id)


def killed_and_resumed(lab, inventory: Path, workdir: Path, operation: str, arguments: dict[str, str],
                       direction: str, index: int, seconds: dict[str, float], want: dict) -> CrashCase:
    """The operation SIGKILLed at its ``index``-th crash point (modulo their number), then
    `kubeha resume`; passed when the cluster ends as ``want`` (an uninterrupted run's end)."""
    workdir.mkdir(parents=True)
    plan = make_plan(inventory, operation, arguments)
    points = crash_points(plan)
    point = points[index % len(points)]
    plan_file = workdir / f"{plan.operation_id}.json"
    plan_file.write_text(plan.to_json())
    journal = workdir / "journal.sqlite"
    started = time.monotonic()
    message = ""
    # in the middle of a step: half its uninterrupted duration after it started
    after_start = seconds.get(point.step, 0.0) / 2 if point.during else None
    if not apply_killed_at(plan_file, plan.operation_id, point.step, inventory, journal, after_start):
        message = "the run ended first"
    elif (resumed := resume_cli(plan.operation_id, inventory, journal)).returncode != 0:
        message = f"kubeha resume failed: {(resumed.stdout + resumed.stderr).strip()[-600:]}"
    elif diff := differences(cluster_state(lab, inventory), want):
        message = f"the cluster differs from an uninterrupted run's: {'; '.join(diff)[:600]}"
    case = CrashCase(operation=operation, layout=load_inventory(inventory).cluster.layout.value, direction=direction,
                     point=str(point), points=len(points), passed=not message,
                     seconds=round(time.monotonic() - started, 1), message=message,
                     date=time.strftime("%Y-%m-%d", time.gmtime()))
    print(f"{operation} {direction} killed {point}: {'passed' if case.passed else message}, {case.seconds:.0f} s",
          flush=True)
    return case


# ---- what the sweeps found: one JSON record per case, and docs/reliability.md's table -----------

RESULTS = Path(__file__).parents[1] / "lab" / "results" / "crash"
TABLE_START = "<!-- table: tests/lab/test_operation_resume.py -->\n"


@dataclass(frozen=True)
class CrashCase:
    operation: str
    layout: str
    direction: str  # "forward" or "back"
    point: str  # "during STEP" or "after STEP"
    points: int  # how many crash points the direction's plan has
    passed: bool
    seconds: float  # the killed run and its resume
    message: str  # why it did not pass ("" when it did)
    date: str  # YYYY-MM-DD

    @property
    def file_name(self) -> str:
        return f"{self.operation}--{self.layout}--{self.direction}--{self.point.replace(' ', '-')}.json"


def read_cases(results: Path = RESULTS) -> list[CrashCase]:
    return sorted(read_json_records(CrashCase, results), key=lambda c: (c.operation, c.layout, c.direction, c.point))


def crash_table(cases: list[CrashCase]) -> str:
    """One row per operation and layout: points in its plans, cases tried and passed, when."""
    lines = ["| operation | layout | crash points (forward + back) | cases tried | cases passed | dates | not passed |",
             "|---|---|---|---|---|---|---|"]
    for operation, layout in dict.fromkeys((c.operation, c.layout) for c in cases):
        mine = [c for c in cases if (c.operation, c.layout) == (operation, layout)]
        points = sum({c.direction: c.points for c in mine}.values())
        failed = "; ".join(f"{c.direction} {c.point}: {' / '.join(c.message.splitlines())}"
                           for c in mine if not c.passed) or "-"
        dates = ", ".join(sorted({c.date for c in mine}))
        lines.append(f"| {operation} | {layout} | {points} | {len(mine)} | {sum(c.passed for c in mine)} "
                     f"| {dates} | {failed} |")
    return "\n".join(lines) + "\n"


def write_docs() -> None:
    RELIABILITY_MD.write_text(docs_with_table(RELIABILITY_MD.read_text(), crash_table(read_cases()), TABLE_START))
