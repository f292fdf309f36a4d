"""`kubeha plan|apply|resume|rollback|journal` and `kubeha etcd ...`: the operation engine's CLI.

Thin commands: an operation (``kubeha.operations.operation``) makes the plan, the engine
(``kubeha.plan``) carries it out, and this module frames a run: it checks the inventory is
the plan's, asks for confirmation, holds the cluster lock, runs the availability probe
beside the engine, shows live progress, and stores the probe's summary in the journal.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kubeha.access import ClusterAccess
from kubeha.cli.probe import print_probe_summary, probe_json
from kubeha.errors import InputError, KubehaError, as_typed
from kubeha.inventory import Inventory, load_inventory
from kubeha.operations import Operation, operation
from kubeha.operations.simulator import StepVerdict, models
from kubeha.operations.verify import refuse_unsafe, verify_plan
from kubeha.plan import (
    ClusterLocked, Journal, JournalError, Plan, PlanError, Progress, RunAction, RunRecord, RunResult, StepOutcome,
    StepRecord, UnknownOperation, default_journal_path, engine, inventory_digest, plan_json, plan_markdown, plan_text,
    steps_to_undo,
)
from kubeha.plan.cluster_lock import cluster_lock_for
from kubeha.plan.model import OPERATION_ID_PATTERN
from kubeha.probe import EtcdWritesSummary, PathSummary, Probe, ProbeRecord, ProbeSummary, new_run_id

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

plan_app = typer.Typer(help="Make a plan: look at the cluster, decide every step, change nothing. "
                            "Prints the plan and saves it for `kubeha apply`.", no_args_is_help=True)
plan_etcd_app = typer.Typer(help="Plan a change of the etcd members.", no_args_is_help=True)
plan_app.add_typer(plan_etcd_app, name="etcd")
etcd_app = typer.Typer(help="Change the etcd members without downtime: plan, show, confirm and apply "
                            "in one go (`kubeha plan etcd ...` then `kubeha apply` does the same in two).",
                       no_args_is_help=True)


class PlanFormat(str, Enum):
    TEXT = "text"
    MARKDOWN = "markdown"
    JSON = "json"


InventoryOption = Annotated[Path, typer.Option("-i", "--inventory", help="The cluster's cluster.yaml.")]
JournalOption = Annotated[Path | None, typer.Option(
    "--journal", help="The journal (SQLite) file; default $XDG_STATE_HOME/kubeha/journal.sqlite, "
                      "i.e. ~/.local/state/kubeha/journal.sqlite. Saved plans and probe timelines go "
                      "beside it.")]
FormatOption = Annotated[PlanFormat, typer.Option("--format", help="How to print the plan: text, markdown "
                                                  "(a runbook for a change ticket) or json.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for plans: the same as --format json).")]
VerifyFlag = Annotated[bool, typer.Option("--verify", help="Play the plan through the simulator (etcd voters, "
                                          "learners, leader, apiservers in the LBs, what each client reads) "
                                          "and show the model after every step; refuse a plan that would "
                                          "break a safety rule at any step.")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Save the plan JSON here (0600); default "
                                                "<journal dir>/plans/<operation id>.json.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
NoProbeOption = Annotated[bool, typer.Option("--no-probe", help="Do not run the availability probe (API "
                                             "reads through the VIP, each LB and node-local proxy, and "
                                             "etcd writes) beside the run.")]

# what the engine says when a run stops early: printed as it is (it names the next command)
_OUTCOME_EVENTS = {o.value for o in StepOutcome}
_MARKS = {"done": "[green]✓[/]", "skipped-already-done": "[dim]=[/]", "refused": "[red]✗[/]",
          "rolled-back": "[yellow]↶[/]", "failed": "[red]✗[/]", "interrupted": "[yellow]![/]"}


# ---- helpers shared by the commands ------------------------------------------------------------


def journal_path_of(journal: Path | None) -> Path:
    return journal if journal is not None else default_journal_path()


def plans_dir(journal_path: Path) -> Path:
    return journal_path.parent / "plans"


def current_inventory_digest(inventory_path: Path) -> str:
    """The digest of the inventory as operations take it when they make a plan: the file's text."""
    try:
        return inventory_digest(inventory_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{inventory_path}: cannot read it: {e}") from None


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def write_private(path: Path, text: str) -> None:
    """``text`` to ``path``, 0600 also when the file was there; a missing parent made 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def save_plan(plan: Plan, out_file: Path | None, journal_path: Path) -> Path:
    """Write the plan JSON (0600): to ``out_file``, or ``<journal dir>/plans/<id>.json`` (dir 0700)."""
    try:
        if out_file is None:
            _private_dir(plans_dir(journal_path))
            path = plans_dir(journal_path) / f"{plan.operation_id}.json"
        else:
            path = out_file
        write_private(path, plan_json(plan))
    except OSError as e:
        raise InputError(f"cannot save the plan to {out_file or plans_dir(journal_path)}: {e}") from None
    return path


def load_plan(reference: str, journal_path: Path) -> tuple[Plan, Path]:
    """A plan from a file, or by the operation id of a plan `kubeha plan` saved beside the journal."""
    path = Path(reference)
    if not path.exists() and re.fullmatch(OPERATION_ID_PATTERN, reference):
        saved = plans_dir(journal_path) / f"{reference}.json"
        if saved.exists():
            path = saved
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the plan {as_typed(reference)}: {e.strerror if isinstance(e, OSError) else e} "
                         f"(give a plan file, or the id of a plan saved in {plans_dir(journal_path)})") from None
    return Plan.from_json(text, f"plan file {path}"), path


def operation_id_argument(text: str) -> str:
    """An operation id as typed; InputError (one line) for one no journal can hold."""
    if not re.fullmatch(OPERATION_ID_PATTERN, text):
        raise InputError(f"{as_typed(text)} is not an operation id (like etcd-migrate-20240501-101500-3fa2): "
                         "`kubeha journal` lists them")
    return text


def print_plan(plan: Plan, fmt: PlanFormat) -> None:
    render = {PlanFormat.TEXT: plan_text, PlanFormat.MARKDOWN: plan_markdown, PlanFormat.JSON: plan_json}[fmt]
    typer.echo(render(plan), nl=False)


def check_inventory(op: Operation, plan: Plan, inventory_path: Path) -> None:
    if not op.inventory_matches(plan, current_inventory_digest(inventory_path)):
        raise PlanError(f"the inventory {inventory_path} is not the one plan {plan.operation_id} was made "
                        f"from (nor its result): it changed since; make a new plan")


def confirm(question: str, yes: bool) -> None:
    if not yes and not typer.confirm(question, default=False, err=True):
        err.print("nothing was done")
        raise typer.Exit(1)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{int(value // 60)} min {int(value % 60)} s"


def _duration(started: datetime | None, finished: datetime | None) -> float | None:
    return (finished - started).total_seconds() if started and finished else None


def _short(iso: str | None) -> str:
    """An ISO time from the journal, to the second, for a table."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S") if iso else "-"


# ---- making a plan -------------------------------------------------------------------------------


def make_plan(operation_name: str, arguments: Mapping[str, str], inventory_path: Path) -> tuple[Plan, Inventory]:
    op = operation(operation_name)
    inventory = load_inventory(inventory_path)
    op.check_arguments(inventory, arguments)  # bad input is refused before any host is touched
    with ClusterAccess(inventory) as access:
        plan = op.make_plan(access, inventory, inventory_path, dict(arguments))
    op.registry.validate(plan)
    return plan, inventory


def print_verdicts(verdicts: Sequence[StepVerdict], console: Console) -> None:
    console.print("simulated, step by step (the model after each step):")
    for v in verdicts:
        console.print(f"  {v.step}: {v.describe()}", soft_wrap=True)
        for why in v.warnings:
            console.print(Text.assemble("    ", Text("warning:", style="yellow"), f" {why}"), soft_wrap=True)
        for why in v.violations:
            console.print(Text.assemble("    ", Text("refused:", style="red"), f" {why}"), soft_wrap=True)


def verified(plan: Plan, inventory: Inventory, console: Console, *, show: bool) -> None:
    """Play ``plan`` through the simulator on the cluster as it is now; refuse it (PlanError)
    when a step would break a safety rule."""
    if not models(plan):
        if show:
            console.print("simulated: nothing (the simulator models none of this plan's step kinds)")
        return
    op = operation(plan.operation)
    with ClusterAccess(inventory, etcd_endpoints=op.etcd_endpoints(plan, inventory)) as access:
        verdicts = verify_plan(access, plan)
    if show:
        print_verdicts(verdicts, console)
    refuse_unsafe(plan, verdicts)


def plan_command(operation_name: str, arguments: Mapping[str, str], inventory_path: Path,
                 journal: Path | None, fmt: PlanFormat, json_output: bool, out_file: Path | None,
                 verify: bool = False) -> None:
    journal_path = journal_path_of(journal)
    plan, inventory = make_plan(operation_name, arguments, inventory_path)
    fmt = PlanFormat.JSON if json_output else fmt
    print_plan(plan, fmt)
    if verify:
        verified(plan, inventory, err if fmt is PlanFormat.JSON else out, show=True)
    saved = save_plan(plan, out_file, journal_path)
    # with JSON on stdout, the notes go to stderr so stdout stays one JSON document
    notes = err if fmt is PlanFormat.JSON else out
    notes.print(f"plan saved to {saved}", soft_wrap=True)
    notes.print(f"next: kubeha apply {saved}" + (f" --journal {journal}" if journal else ""), soft_wrap=True)


# ---- running: apply, resume, rollback -------------------------------------------------------------


class ProbeCounters:
    """Live counters from the probe's records, taken in as they grow: requests (first
    attempts), failures (first attempts that failed) and the longest time a path went
    without a success (an ongoing gap included)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.requests = 0
        self.failures = 0
        self._seen = 0
        self._gap = 0.0
        self._last_ok: dict[str, float] = {}

    def update(self, records: Sequence[ProbeRecord]) -> None:
        for record in records[self._seen:]:
            if not record.retry:
                self.requests += 1
                self.failures += not record.ok
            last = self._last_ok.setdefault(record.path, self.started)
            if record.ok:
                self._gap = max(self._gap, record.done - last)
                self._last_ok[record.path] = max(last, record.done)
        self._seen = len(records)

    def longest_gap(self, now: float) -> float:
        return max([self._gap, *(now - last for last in self._last_ok.values())])


class RunDisplay:
    """Progress of a run: a live status line on a terminal (step i/N, event, elapsed, probe
    counters), and one printed line per step outcome everywhere."""

    def __init__(self, plan: Plan, action: RunAction, prober: Probe | None) -> None:
        self.plan = plan
        self.action = action
        self.prober = prober
        self.started = time.monotonic()
        self.current: Progress | None = None
        self.finished: set[str] = set()  # steps that ended done (or were found done)
        self.steps_of: dict[str, list[str]] = {}  # host -> the ids of its steps, in plan order
        for planned in plan.steps:
            for host in planned.hosts:
                self.steps_of.setdefault(host, []).append(planned.id)
        self.counters = ProbeCounters(time.time())
        self.live = (Live(get_renderable=self.render, console=out, refresh_per_second=4, transient=True)
                     if out.is_terminal else None)

    def __enter__(self) -> RunDisplay:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()

    def progress(self, progress: Progress) -> None:
        self.current = progress
        step = progress.step
        if step is None:
            return
        if progress.event in (StepOutcome.DONE.value, StepOutcome.SKIPPED_ALREADY_DONE.value):
            self.finished.add(step.id)
        where = Text(f"[{progress.index}/{progress.total}] {step.id}: {step.title}")
        if progress.event in _OUTCOME_EVENTS or progress.event in ("retrying", "stopping"):
            mark = Text.from_markup(_MARKS.get(progress.event, "·"))
            line = Text.assemble(mark, " ", where, f" - {progress.event}",
                                 f": {progress.message}" if progress.message else "")
            out.print(line, soft_wrap=True)

    def probe_line(self) -> Text:
        if self.prober is None:
            return Text("probe: off", style="dim")
        self.counters.update(self.prober.records)
        c = self.counters
        return Text(f"probe: {c.requests} requests, {c.failures} failed, longest gap "
                    f"{c.longest_gap(time.time()) * 1000:.0f} ms", style="red" if c.failures else "dim")

    def render(self) -> Group:
        p = self.current
        elapsed = _seconds(time.monotonic() - self.started)
        if p is None or p.step is None:
            status = Text(f"{self.action.value} {self.plan.operation_id}: starting ({elapsed})")
        else:
            status = Text(f"{self.action.value} {self.plan.operation_id}: step {p.index}/{p.total} "
                          f"{p.step.title}: {p.event} ({elapsed})")
        return Group(status, self.hosts_table(), self.probe_line())

    def hosts_table(self) -> Table:
        """One bar per host: its steps ended done of its steps in the plan."""
        table = Table.grid(padding=(0, 1))
        working = set(self.current.step.hosts) if self.current and self.current.step else set()
        for host, ids in self.steps_of.items():
            done = sum(1 for i in ids if i in self.finished)
            table.add_row(Text(host, style="bold" if host in working else ""),
                          ProgressBar(total=len(ids), completed=done, width=30), f"{done}/{len(ids)}")
        return table


def _last_run_id(journal: Journal, operation_id: str) -> int:
    runs = journal.runs(operation_id)
    return runs[-1].run_id if runs else 0


def probe_summary_from_json(data: Mapping[str, Any]) -> tuple[ProbeSummary, dict[str, str]]:
    """A stored probe summary (``journal.probes``) back as a ProbeSummary and its path targets."""
    etcd = data.get("etcd")
    return (ProbeSummary(
        started=data["started"], ended=data["ended"],
        paths=tuple(PathSummary(**p) for p in data["paths"]),
        etcd=EtcdWritesSummary(etcd["writes"], etcd["acknowledged"],
                               None if etcd["lost"] is None else tuple(etcd["lost"])) if etcd else None),
        dict(data.get("targets", {})))


def _finish_probe(prober: Probe, journal: Journal, operation_id: str, run_id: int | None) -> None:
    """Stop the probe; name its timeline after the journal's run, store and print its summary."""
    summary = prober.stop()
    targets = {p.name: p.target for p in prober.paths}
    timeline = prober.timeline
    if run_id is not None and timeline is not None and timeline.exists():
        named = timeline.with_name(f"run-{run_id}.jsonl")
        timeline.rename(named)
        timeline = named
    if run_id is not None:
        journal.record_probe(run_id, operation_id, probe_json(summary, targets), timeline)
    print_probe_summary(summary, targets)
    if timeline is not None:
        out.print(f"probe timeline: {timeline}", soft_wrap=True)
    if not summary.healthy:
        out.print("[yellow]the probe saw requests fail even after a retry, or lost etcd writes[/]")


def _result_line(result: RunResult, elapsed: float) -> str:
    counts: dict[str, int] = {}
    for outcome in result.steps.values():
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
    said = ", ".join(f"{n} {'already done' if o == 'skipped-already-done' else o}" for o, n in counts.items())
    return f"{result.operation_id}: {result.outcome.value} ({said or 'no step'}) in {_seconds(elapsed)}"


def run_operation(action: RunAction, plan: Plan, op: Operation, inventory: Inventory, journal: Journal, *,
                  probe: bool) -> RunResult:
    """One engine run of ``plan`` with the cluster lock, live progress and (unless ``probe`` is
    false) the probe; a run the engine stops early is said (its message names the next
    command) and exits 1."""
    operation_id = plan.operation_id
    before = _last_run_id(journal, operation_id)
    started = time.monotonic()
    stopped: KubehaError | None = None
    result: RunResult | None = None
    left: list[str] = []
    with ClusterAccess(inventory, etcd_endpoints=op.etcd_endpoints(plan, inventory)) as access:
        prober = None
        if probe:
            probes = journal.path.parent / "probes" / operation_id
            _private_dir(probes)
            probe_id = new_run_id()
            prober = Probe(access, node_proxies=True, etcd_writes=True, run_id=probe_id,
                           timeline=probes / f"probe-{probe_id}.jsonl",
                           skip_lb_hosts=op.retiring_lb_hosts(plan, inventory))
            prober.start()
        display = RunDisplay(plan, action, prober)
        hooks: dict[str, Any] = {"cluster": access, "cluster_lock": cluster_lock_for(access),
                                 "on_progress": display.progress}
        try:
            with display:
                view_factory = op.view_factory(access, plan)
                if action is RunAction.APPLY:
                    result = engine.apply(plan, op.registry, view_factory, journal, inventory_digest=None, **hooks)
                elif action is RunAction.RESUME:
                    result = engine.resume(operation_id, op.registry, view_factory, journal,
                                           inventory_digest=None, **hooks)
                else:
                    result = engine.rollback(operation_id, op.registry, view_factory, journal, **hooks)
            if action is not RunAction.ROLLBACK:
                left = _left_to_do(op, access, plan, inventory)
        except ClusterLocked as e:  # this run did nothing; its plan is journaled (apply records it first)
            again = "kubeha resume" if action is RunAction.APPLY else f"kubeha {action.value}"
            stopped = ClusterLocked(f"{e}; then: {again} {operation_id}")
        except KubehaError as e:
            stopped = e
        finally:
            if prober is not None:
                newer = [r.run_id for r in journal.runs(operation_id) if r.run_id > before]
                _finish_probe(prober, journal, operation_id, newer[-1] if newer else None)
    if stopped is not None:
        err.print(Text.assemble(Text("error:", style="red"), f" {stopped}"), soft_wrap=True)
        raise typer.Exit(1)
    assert result is not None
    out.print(_result_line(result, time.monotonic() - started), soft_wrap=True)
    for line in left:
        out.print(f"left to do: {line}", soft_wrap=True)
    out.print(f"the journal: kubeha journal {operation_id}; a report: kubeha report {operation_id}")
    return result


def _left_to_do(op: Operation, access: ClusterAccess, plan: Plan, inventory: Inventory) -> list[str]:
    try:
        return op.left_to_do(access, plan, inventory)
    except KubehaError as e:
        return [f"could not look for what is left to do: {e}"]


def _open_journal(journal_path: Path) -> Journal:
    return Journal(journal_path)


def apply_plan(plan: Plan, inventory_path: Path, journal_path: Path, *, yes: bool, no_probe: bool,
               shown: bool = False) -> None:
    op = operation(plan.operation)
    op.registry.validate(plan)
    check_inventory(op, plan, inventory_path)
    inventory = load_inventory(inventory_path)
    if not shown:
        typer.echo(plan_text(plan), nl=False)
    verified(plan, inventory, out, show=False)  # a second, independent look before anything runs
    confirm(f"apply plan {plan.operation_id} ({len(plan.steps)} steps) to cluster {inventory.cluster.name}?", yes)
    with _open_journal(journal_path) as journal:
        run_operation(RunAction.APPLY, plan, op, inventory, journal, probe=not no_probe)


def without_its_record(operation_id: str, journal_path: Path, saved_plan: Path | None) -> str:
    """What to do when the journal has no record of an operation (it was deleted, or is not
    the journal the operation ran with): not guess which steps were done."""
    if saved_plan is None:
        return (f"; kubeha will not resume or roll back {operation_id} without its record: give the journal it ran "
                f"with (--journal), or make a new plan, which starts from what the cluster shows")
    journal = "" if journal_path == default_journal_path() else f" --journal {journal_path}"
    return (f"; kubeha will not resume or roll back {operation_id} without its record: give the journal it ran "
            f"with (--journal), or go on from what the cluster shows with kubeha apply {saved_plan}{journal} "
            f"(steps found done on the cluster are skipped)")


def _journaled(operation_id: str, journal: Journal, inventory_path: Path) -> tuple[Plan, Operation, Inventory]:
    try:
        plan = journal.plan(operation_id)
    except UnknownOperation as e:
        saved = plans_dir(journal.path) / f"{operation_id}.json"
        raise UnknownOperation(f"{e}{without_its_record(operation_id, journal.path, saved if saved.exists() else None)}"
                               ) from None
    op = operation(plan.operation)
    check_inventory(op, plan, inventory_path)
    return plan, op, load_inventory(inventory_path)


def _last_run_line(runs: Sequence[RunRecord]) -> str:
    if not runs:
        return "never run"
    last = runs[-1]
    outcome = last.outcome.value if last.outcome else "no outcome (still running, or the process died)"
    return f"last run {last.run_id}: {last.action.value} {outcome}" + (f": {last.message}" if last.message else "")


# ---- the commands ------------------------------------------------------------------------------


def apply(
    plan_file: Annotated[str, typer.Argument(metavar="PLAN", help="A plan file from `kubeha plan`, or the "
                                             "operation id of a plan it saved beside the journal.")],
    inventory: InventoryOption = Path("cluster.yaml"),
    journal: JournalOption = None,
    yes: YesOption = False,
    no_probe: NoProbeOption = False,
) -> None:
    """Carry out a plan: check, run, verify and journal each step, with the probe beside it.

    Before each step a fresh look at the cluster decides whether it is already done
    (skipped) or safe (its safety checks; any reason refuses the step, every reason listed,
    nothing of it done); each step is verified, and rolled back when it fails. Every
    attempt is journaled. Holds the cluster lock in etcd for the run.

    Beside the run the availability probe reads the API through the VIP, each LB and each
    node-local proxy and writes numbered etcd keys; its summary is printed at the end and
    stored in the journal. The inventory must be the one the plan was made from.

    Exit status: 0 done; 1 refused, failed, interrupted or not confirmed (the message says
    what to run next: `kubeha resume <id>` or `kubeha rollback <id>`).

    Examples:

      kubeha apply ~/.local/state/kubeha/plans/etcd-migrate-20240501-101500-3fa2.json -i cluster.yaml

      kubeha apply etcd-migrate-20240501-101500-3fa2 --yes --no-probe
    """
    journal_path = journal_path_of(journal)
    plan, _ = load_plan(plan_file, journal_path)
    apply_plan(plan, inventory, journal_path, yes=yes, no_probe=no_probe)


def resume(
    operation_id: Annotated[str, typer.Argument(help="The operation to go on with (see `kubeha journal`).")],
    inventory: InventoryOption = Path("cluster.yaml"),
    journal: JournalOption = None,
    yes: YesOption = False,
    no_probe: NoProbeOption = False,
) -> None:
    """Go on with a journaled operation after a stop; steps already done are skipped.

    After a refusal, a failure, Ctrl-C or a crash: the plan comes from the journal and runs
    again from its first step; steps the cluster shows done are skipped (recognised on the
    cluster, not trusted from the journal), the rest are checked and run as by
    `kubeha apply`, with the probe.

    Examples:

      kubeha resume etcd-migrate-20240501-101500-3fa2 -i cluster.yaml

      kubeha resume etcd-migrate-20240501-101500-3fa2 --yes
    """
    journal_path = journal_path_of(journal)
    with _open_journal(journal_path) as opened:
        plan, op, loaded = _journaled(operation_id_argument(operation_id), opened, inventory)
        typer.echo(plan_text(plan), nl=False)
        out.print(f"{operation_id}: {_last_run_line(opened.runs(operation_id))}", soft_wrap=True)
        confirm(f"resume {operation_id} on cluster {loaded.cluster.name}?", yes)
        run_operation(RunAction.RESUME, plan, op, loaded, opened, probe=not no_probe)


def rollback(
    operation_id: Annotated[str, typer.Argument(help="The operation to undo (see `kubeha journal`).")],
    inventory: InventoryOption = Path("cluster.yaml"),
    journal: JournalOption = None,
    yes: YesOption = False,
    no_probe: NoProbeOption = False,
) -> None:
    """Undo the steps of a journaled operation that kubeha changed, newest first.

    Every step kubeha changed and has not undone yet is undone. Steps found already done
    (someone else's) are left alone; a step that cannot be undone stops the rollback
    before it, naming what to do by hand. Runs the probe as `kubeha apply` does.

    Examples:

      kubeha rollback etcd-migrate-20240501-101500-3fa2 -i cluster.yaml

      kubeha rollback etcd-migrate-20240501-101500-3fa2 --yes --no-probe
    """
    journal_path = journal_path_of(journal)
    with _open_journal(journal_path) as opened:
        plan, op, loaded = _journaled(operation_id_argument(operation_id), opened, inventory)
        todo = [step for step in steps_to_undo(plan, opened.steps(operation_id))
                if not op.registry.kind(step.kind).leaves_nothing_to_undo(step)]
        if not todo:
            out.print(f"{operation_id}: nothing to undo (no step kubeha changed is left un-undone)", soft_wrap=True)
            return
        out.print(f"{operation_id}: undo, newest first:", soft_wrap=True)
        for step in todo:
            undo = step.rollback or "-"
            out.print(Text(f"  {step.id}: {step.title}; "
                           f"{undo if step.reversible else 'NOT REVERSIBLE: ' + undo}"), soft_wrap=True)
        confirm(f"roll back {len(todo)} steps of {operation_id} on cluster {loaded.cluster.name}?", yes)
        run_operation(RunAction.ROLLBACK, plan, op, loaded, opened, probe=not no_probe)


def _run_json(run: RunRecord) -> dict[str, Any]:
    return {"run_id": run.run_id, "action": run.action.value, "started": run.started.isoformat(),
            "finished": run.finished.isoformat() if run.finished else None,
            "outcome": run.outcome.value if run.outcome else None, "message": run.message,
            "pid": run.pid, "operator_host": run.operator_host}


def _step_json(step: StepRecord) -> dict[str, Any]:
    return {"run_id": step.run_id, "step_id": step.step_id, "attempt": step.attempt,
            "started": step.started.isoformat(), "finished": step.finished.isoformat() if step.finished else None,
            "outcome": step.outcome.value if step.outcome else None, "retries": step.retries,
            "duration_seconds": _duration(step.started, step.finished), "message": step.message,
            "backups": list(step.backups)}


def journal_list(journal_path: Path) -> list[dict[str, Any]]:
    """One entry per journaled operation, oldest first."""
    if not journal_path.exists():
        return []
    with Journal(journal_path) as opened:
        listed = []
        for operation_id in opened.operation_ids():
            plan = opened.plan(operation_id)
            runs = opened.runs(operation_id)
            listed.append({"operation_id": operation_id, "operation": plan.operation,
                           "arguments": plan.arguments, "created": plan.created.isoformat(),
                           "last_run": _run_json(runs[-1]) if runs else None})
        return listed


def journal_detail(journal_path: Path, operation_id: str) -> dict[str, Any]:
    """An operation's plan header, runs, step attempts and stored probe summaries."""
    if not journal_path.exists():
        raise JournalError(f"the journal {journal_path} does not exist yet: no operation has run")
    with Journal(journal_path) as opened:
        plan = opened.plan(operation_id)
        return {"operation_id": operation_id, "operation": plan.operation, "arguments": plan.arguments,
                "created": plan.created.isoformat(), "inventory_digest": plan.inventory_digest,
                "steps_planned": [{"id": s.id, "title": s.title, "kind": s.kind} for s in plan.steps],
                "runs": [_run_json(run) for run in opened.runs(operation_id)],
                "attempts": [_step_json(step) for step in opened.steps(operation_id)],
                "probes": [{"run_id": p.run_id, "summary": p.summary, "timeline_path": p.timeline_path}
                           for p in opened.probes(operation_id)]}


def _print_journal_list(listed: list[dict[str, Any]], journal_path: Path) -> None:
    if not listed:
        out.print(f"no operations in the journal {journal_path}", soft_wrap=True)
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("operation id", no_wrap=True)
    for column in ("operation", "created", "last run"):
        table.add_column(column, overflow="fold")
    for entry in listed:
        last = entry["last_run"]
        said = "never run" if last is None else (
            f"{last['action']} {last['outcome'] or 'no outcome (running, or the process died)'}"
            + (f" {_short(last['finished'])}" if last["finished"] else ""))
        arguments = " ".join(f"{k}={v}" for k, v in sorted(entry["arguments"].items()))
        table.add_row(entry["operation_id"], f"{entry['operation']} {arguments}".strip(), _short(entry["created"]),
                      said)
    out.print(table)


def _print_journal_detail(detail: dict[str, Any]) -> None:
    arguments = " ".join(f"{k}={v}" for k, v in sorted(detail["arguments"].items()))
    out.print(Text(f"{detail['operation_id']}: {detail['operation']} {arguments}".rstrip()
                   + f", created {_short(detail['created'])}, {len(detail['steps_planned'])} steps"), soft_wrap=True)
    runs = Table(title="runs", show_edge=False, pad_edge=False, title_justify="left")
    for column in ("run", "action", "started", "finished", "outcome", "message", "by"):
        runs.add_column(column, overflow="fold")
    for run in detail["runs"]:
        runs.add_row(str(run["run_id"]), run["action"], _short(run["started"]), _short(run["finished"]),
                     run["outcome"] or "no outcome", run["message"] or "", f"{run['operator_host']} pid {run['pid']}")
    out.print(runs if detail["runs"] else "never run")
    attempts = Table(title="step attempts", show_edge=False, pad_edge=False, title_justify="left")
    for column in ("run", "step", "attempt", "outcome", "retries", "duration", "message", "backups"):
        attempts.add_column(column, overflow="fold")
    for a in detail["attempts"]:
        took = "-" if a["duration_seconds"] is None else _seconds(a["duration_seconds"])
        attempts.add_row(str(a["run_id"]), a["step_id"], str(a["attempt"]), a["outcome"] or "cut short",
                         str(a["retries"]), took, a["message"], ", ".join(a["backups"]))
    if detail["attempts"]:
        out.print(attempts)
    for stored in detail["probes"]:
        summary, targets = probe_summary_from_json(stored["summary"])
        out.print(f"probe of run {stored['run_id']}" + (f" (timeline {stored['timeline_path']})"
                                                        if stored["timeline_path"] else ""))
        print_probe_summary(summary, targets)


def journal_command(
    operation_id: Annotated[str | None, typer.Argument(help="Show this operation in detail; "
                                                       "default: list every operation.")] = None,
    journal: JournalOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Show what kubeha did: every operation, or one operation's runs, steps and probes.

    Without an operation id, one line per journaled operation (id, operation, created,
    how its last run ended); with one, its runs, every attempt at each
    step (outcome, retries, duration, message, where its backups are) and the probe's
    summary of each run. Reads the local journal only.

    Examples:

      kubeha journal

      kubeha journal etcd-migrate-20240501-101500-3fa2

      kubeha journal etcd-migrate-20240501-101500-3fa2 --json | jq '.attempts[] | select(.outcome != "done")'
    """
    journal_path = journal_path_of(journal)
    if operation_id is None:
        listed = journal_list(journal_path)
        if json_output:
            typer.echo(json.dumps(listed, indent=2))
        else:
            _print_journal_list(listed, journal_path)
        return
    detail = journal_detail(journal_path, operation_id_argument(operation_id))
    if json_output:
        typer.echo(json.dumps(detail, indent=2))
    else:
        _print_journal_detail(detail)


# ---- kubeha plan etcd ... and kubeha etcd ... ------------------------------------------------------

ReplaceOption = Annotated[str, typer.Option("--replace", help="OLD=NEW[,OLD=NEW...]: each NEW host joins "
                                            "etcd, then each OLD member leaves (host names of cluster.yaml).")]
AddHost = Annotated[str, typer.Argument(metavar="HOST", help="The host (of cluster.yaml) that joins etcd; "
                                        "several: HOST,HOST.")]
RemoveHost = Annotated[str, typer.Argument(metavar="HOST", help="The etcd member's host that leaves; "
                                           "several: HOST,HOST.")]


@plan_etcd_app.command("migrate")
def plan_etcd_migrate(replace: ReplaceOption, inventory: InventoryOption = Path("cluster.yaml"),
                      journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT,
                      json_output: JsonFlag = False, out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan moving etcd members to other hosts, one at a time, without losing quorum: each
    new member joins (as a learner where etcd supports it), catches up and is promoted, the
    apiservers are pointed at it, then the old member leaves. Changes nothing.

    Examples:

      kubeha plan etcd migrate --replace m1=s1,m2=s2 -i cluster.yaml

      kubeha plan etcd migrate --replace m1=s1 --format markdown > change-ticket.md

      kubeha plan etcd migrate --replace m1=s1,m2=s2,m3=s3 --verify
    """
    plan_command("etcd-migrate", {"replace": replace}, inventory, journal, fmt, json_output, out_file, verify)


@plan_etcd_app.command("add")
def plan_etcd_add(host: AddHost, inventory: InventoryOption = Path("cluster.yaml"),
                  journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT,
                  json_output: JsonFlag = False, out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan adding an etcd member on HOST. Changes nothing.

    Examples:

      kubeha plan etcd add s1 -i cluster.yaml

      kubeha plan etcd add s1 --json --out /tmp/add-s1.json
    """
    plan_command("etcd-add", {"host": host}, inventory, journal, fmt, json_output, out_file, verify)


@plan_etcd_app.command("remove")
def plan_etcd_remove(host: RemoveHost, inventory: InventoryOption = Path("cluster.yaml"),
                     journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT,
                     json_output: JsonFlag = False, out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan removing the etcd member on HOST (refused when the rest could not keep quorum).
    Changes nothing.

    Examples:

      kubeha plan etcd remove m3 -i cluster.yaml

      kubeha plan etcd remove m3 --format markdown
    """
    plan_command("etcd-remove", {"host": host}, inventory, journal, fmt, json_output, out_file, verify)


def run_now(operation_name: str, arguments: Mapping[str, str], inventory_path: Path, journal: Path | None,
            fmt: PlanFormat, out_file: Path | None, yes: bool, no_probe: bool) -> None:
    """Plan, show, save, confirm and apply in one go."""
    journal_path = journal_path_of(journal)
    plan, _ = make_plan(operation_name, arguments, inventory_path)
    print_plan(plan, fmt)
    out.print(f"plan saved to {save_plan(plan, out_file, journal_path)}", soft_wrap=True)
    apply_plan(plan, inventory_path, journal_path, yes=yes, no_probe=no_probe, shown=True)


@etcd_app.command("migrate")
def etcd_migrate(replace: ReplaceOption, inventory: InventoryOption = Path("cluster.yaml"),
                 journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None,
                 yes: YesOption = False, no_probe: NoProbeOption = False) -> None:
    """Move etcd members to other hosts without downtime: `kubeha plan etcd migrate`, then
    (after you confirm) `kubeha apply` of that plan, with the probe.

    Examples:

      kubeha etcd migrate --replace m1=s1,m2=s2 -i cluster.yaml

      kubeha etcd migrate --replace m3=s3 --yes
    """
    run_now("etcd-migrate", {"replace": replace}, inventory, journal, fmt, out_file, yes, no_probe)


@etcd_app.command("add")
def etcd_add(host: AddHost, inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
             fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None, yes: YesOption = False,
             no_probe: NoProbeOption = False) -> None:
    """Add an etcd member on HOST: plan, show, confirm, apply with the probe.

    Examples:

      kubeha etcd add s1 -i cluster.yaml

      kubeha etcd add s1 --yes --no-probe
    """
    run_now("etcd-add", {"host": host}, inventory, journal, fmt, out_file, yes, no_probe)


@etcd_app.command("remove")
def etcd_remove(host: RemoveHost, inventory: InventoryOption = Path("cluster.yaml"),
                journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None,
                yes: YesOption = False, no_probe: NoProbeOption = False) -> None:
    """Remove the etcd member on HOST: plan, show, confirm, apply with the probe.

    Examples:

      kubeha etcd remove m3 -i cluster.yaml

      kubeha etcd remove m3 --yes
    """
    run_now("etcd-remove", {"host": host}, inventory, journal, fmt, out_file, yes, no_probe)


ComponentOption = Annotated[str | None, typer.Option(
    "--component", "-c", help="C[,C...]: what to restart, of etcd, kube-apiserver, kube-controller-manager, "
                              "kube-scheduler; default the last three.")]
RestartHostsOption = Annotated[str | None, typer.Option(
    "--host", help="H[,H...]: only these hosts (of cluster.yaml); default every host running a component named.")]


RestartTimeoutOption = Annotated[float | None, typer.Option(
    "--timeout", help="Seconds each component gets to come back restarted and healthy (default 120); one that "
                      "does not stops the run.")]
RestartSetOption = Annotated[list[str] | None, typer.Option(
    "--set", metavar="FLAG=VALUE", help="Set this flag in the component's manifest or unit before each restart "
                                        "(added where missing); repeatable; one component only.")]


def _restart_arguments(component: str | None, host: str | None, timeout: float | None,
                       flags: list[str] | None) -> dict[str, str]:
    given = (("component", component), ("host", host), ("timeout", None if timeout is None else f"{timeout:g}"),
             ("set", ",".join(flags or ())))
    return {name: value for name, value in given if value}


@plan_app.command("rolling-restart")
def plan_rolling_restart(component: ComponentOption = None, host: RestartHostsOption = None,
                         timeout: RestartTimeoutOption = None, set_flags: RestartSetOption = None,
                         inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                         fmt: FormatOption = PlanFormat.TEXT, json_output: JsonFlag = False,
                         out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan restarting control-plane components one host and one component at a time: an
    apiserver (and etcd on a master) out of every load balancer while it restarts, back in
    when ready; etcd followers first, leadership moved off the leader before it restarts.
    Changes nothing.

    Examples:

      kubeha plan rolling-restart -i cluster.yaml

      kubeha plan rolling-restart --component etcd,kube-apiserver --host m1,m2 --format markdown

      kubeha plan rolling-restart --component etcd --set heartbeat-interval=50 --set election-timeout=500
    """
    plan_command("rolling-restart", _restart_arguments(component, host, timeout, set_flags), inventory, journal, fmt, json_output,
                 out_file, verify)


def rolling_restart(component: ComponentOption = None, host: RestartHostsOption = None,
                    timeout: RestartTimeoutOption = None, set_flags: RestartSetOption = None,
                    inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                    fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None, yes: YesOption = False,
                    no_probe: NoProbeOption = False) -> None:
    """Restart control-plane components without a failed request: plan, show, confirm,
    apply with the probe (`kubeha plan rolling-restart` then `kubeha apply` does the same in two).

    Examples:

      kubeha rolling-restart -i cluster.yaml

      kubeha rolling-restart --component kube-apiserver --yes

      kubeha rolling-restart --component etcd --set heartbeat-interval=50 --set election-timeout=500
    """
    run_now("rolling-restart", _restart_arguments(component, host, timeout, set_flags), inventory, journal, fmt, out_file, yes,
            no_probe)


MasterHost = Annotated[str, typer.Argument(metavar="HOST", help="The host (of cluster.yaml).")]


@plan_app.command("add-master")
def plan_add_master(host: MasterHost, inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                    fmt: FormatOption = PlanFormat.TEXT, json_output: JsonFlag = False, out_file: OutOption = None,
                    verify: VerifyFlag = False) -> None:
    """Plan making HOST a master, copied from a master that runs (PKI, kubeconfigs, kubelet,
    manifests or units): listed by every load balancer out of rotation, kubelet started and
    its Node marked as the others, its etcd member joined (stacked etcd), its apiserver put
    into rotation only once ready, controller-manager and scheduler started. Changes nothing.

    Examples:

      kubeha plan add-master spare1 -i cluster.yaml

      kubeha plan add-master spare1 --format markdown --verify
    """
    plan_command("add-master", {"host": host}, inventory, journal, fmt, json_output, out_file, verify)


@plan_app.command("remove-master")
def plan_remove_master(host: MasterHost, inventory: InventoryOption = Path("cluster.yaml"),
                       journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT, json_output: JsonFlag = False,
                       out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan retiring the master HOST: out of every load balancer, its components stopped,
    its etcd member removed (leadership moved off it first), gone from every load balancer's
    config, kubelet stopped and its Node deleted. Refused for the last master or when etcd
    would be left without a failure to spare. Changes nothing.

    Examples:

      kubeha plan remove-master master3 -i cluster.yaml
    """
    plan_command("remove-master", {"host": host}, inventory, journal, fmt, json_output, out_file, verify)


def add_master(host: MasterHost, inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
               fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None, yes: YesOption = False,
               no_probe: NoProbeOption = False) -> None:
    """Make HOST a master without a failed request: plan, show, confirm, apply with the probe.

    Examples:

      kubeha add-master spare1 -i cluster.yaml
    """
    run_now("add-master", {"host": host}, inventory, journal, fmt, out_file, yes, no_probe)


def remove_master(host: MasterHost, inventory: InventoryOption = Path("cluster.yaml"), journal: JournalOption = None,
                  fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None, yes: YesOption = False,
                  no_probe: NoProbeOption = False) -> None:
    """Retire the master HOST without a failed request: plan, show, confirm, apply with the probe.

    Examples:

      kubeha remove-master master3 -i cluster.yaml --yes
    """
    run_now("remove-master", {"host": host}, inventory, journal, fmt, out_file, yes, no_probe)


MigrateReplace = Annotated[str, typer.Option("--replace", help="OLD=NEW[,OLD=NEW...]: each NEW host becomes a "
                                             "master, then OLD stops being one (host names of cluster.yaml).")]


@plan_app.command("migrate-masters")
def plan_migrate_masters(replace: MigrateReplace, inventory: InventoryOption = Path("cluster.yaml"),
                         journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT,
                         json_output: JsonFlag = False, out_file: OutOption = None, verify: VerifyFlag = False) -> None:
    """Plan moving the control plane to new machines, pair by pair: NEW added as
    `add-master` does it, then OLD retired as `remove-master` does it (etcd members too,
    when stacked), the inventory rewritten after each; then each new etcd member restarted
    with an --initial-cluster that names only the members it has. Changes nothing.

    Examples:

      kubeha plan migrate-masters --replace master1=spare1,master2=spare2,master3=spare3

      kubeha plan migrate-masters --replace master1=spare1 --format markdown --verify
    """
    plan_command("migrate-masters", {"replace": replace}, inventory, journal, fmt, json_output, out_file, verify)


def migrate_masters(replace: MigrateReplace, inventory: InventoryOption = Path("cluster.yaml"),
                    journal: JournalOption = None, fmt: FormatOption = PlanFormat.TEXT, out_file: OutOption = None,
                    yes: YesOption = False, no_probe: NoProbeOption = False) -> None:
    """Move the control plane to new machines without a failed request: plan, show, confirm,
    apply with the probe.

    Examples:

      kubeha migrate-masters --replace master1=spare1,master2=spare2,master3=spare3 -i cluster.yaml
    """
    run_now("migrate-masters", {"replace": replace}, inventory, journal, fmt, out_file, yes, no_probe)


__all__ = [
    "PlanFormat", "ProbeCounters", "RunDisplay", "add_master", "apply", "apply_plan", "current_inventory_digest", "etcd_app",
    "journal_command", "journal_detail", "journal_list", "load_plan", "make_plan", "migrate_masters", "plan_app",
    "probe_summary_from_json", "remove_master", "resume", "rollback", "rolling_restart", "run_operation", "save_plan",
]
