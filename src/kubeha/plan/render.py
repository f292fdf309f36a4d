"""The plan as people and programs read it: plain text, a Markdown runbook, JSON.

Pure functions of the plan, stable for the same plan: the Markdown is meant to be pasted
into a change ticket and compared between reviews.
"""

from __future__ import annotations

from kubeha.plan.model import Change, ChangeKind, Plan, Step


def duration(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def describe_change(change: Change) -> str:
    where = f" on {change.host}" if change.host else ""
    before = change.before if change.before is not None else "absent"
    after = change.after if change.after is not None else "absent"
    return f"{change.kind.value} {change.target}{where}: {before} -> {after}"


def changes_by_kind(plan: Plan) -> dict[ChangeKind, list[Change]]:
    """Every change of the plan, grouped by kind in a fixed order: what the operation touches."""
    grouped: dict[ChangeKind, list[Change]] = {kind: [] for kind in ChangeKind}
    for step in plan.steps:
        for change in step.changes:
            grouped[change.kind].append(change)
    return {kind: changes for kind, changes in grouped.items() if changes}


def _header(plan: Plan) -> list[tuple[str, str]]:
    arguments = " ".join(f"{name}={value}" for name, value in sorted(plan.arguments.items()))
    return [("operation", f"{plan.operation} {arguments}".strip()),
            ("operation id", plan.operation_id),
            ("created", plan.created.isoformat(timespec="seconds")),
            ("inventory", plan.inventory_digest),
            ("steps", f"{len(plan.steps)}, about {duration(plan.estimated_seconds)}")]


def _undo_line(step: Step) -> str:
    if step.reversible:
        return step.rollback or "-"
    return f"NOT REVERSIBLE. {step.rollback}".strip()


def plan_text(plan: Plan) -> str:
    lines = [f"{name + ':':<14}{value}" for name, value in _header(plan)]
    for number, step in enumerate(plan.steps, 1):
        lines += ["", f"{number}. {step.title}  [{step.id}, {step.kind}, ~{duration(step.estimated_seconds)}]"]
        if step.hosts:
            lines.append(f"   hosts:    {', '.join(step.hosts)}")
        if step.safety_checks:
            lines.append(f"   checks:   {', '.join(step.safety_checks)}")
        lines += [f"   change:   {describe_change(change)}" for change in step.changes]
        if step.verification:
            lines.append(f"   verify:   {step.verification}")
        lines.append(f"   rollback: {_undo_line(step)}")
    lines += ["", "Changes:"]
    for kind, changes in changes_by_kind(plan).items():
        lines.append(f"  {kind.value} ({len(changes)}):")
        lines += [f"    {describe_change(change)}" for change in changes]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def plan_markdown(plan: Plan) -> str:
    lines = [f"# {plan.operation}: {plan.operation_id}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in _header(plan)]
    lines += ["", "## What changes", ""]
    for kind, changes in changes_by_kind(plan).items():
        lines += [f"- **{kind.value}** ({len(changes)})"]
        lines += [f"  - `{describe_change(change)}`" for change in changes]
    lines += ["", "## Steps"]
    for number, step in enumerate(plan.steps, 1):
        lines += ["", f"### {number}. {step.title}", "",
                  f"- Step: `{step.id}` ({step.kind}), estimated {duration(step.estimated_seconds)}"]
        if step.hosts:
            lines.append(f"- Hosts: {', '.join(step.hosts)}")
        lines.append("- Safety checks (on a fresh look at the cluster, just before the step):")
        lines += [f"  - [ ] {name}" for name in step.safety_checks] or ["  - none"]
        lines.append("- Changes:")
        lines += [f"  - `{describe_change(change)}`" for change in step.changes] or ["  - none"]
        lines.append(f"- Verification: {step.verification or '-'}")
        lines.append(f"- Rollback: {_undo_line(step)}")
    lines += ["", "## Commands", "",
              f"- Run: `kubeha apply {plan.operation_id}`",
              f"- After a stop, once fixed: `kubeha resume {plan.operation_id}`",
              f"- Undo the finished steps: `kubeha rollback {plan.operation_id}`"]
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan) -> str:
    return plan.to_json() + "\n"
