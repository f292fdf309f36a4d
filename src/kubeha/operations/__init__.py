"""Operations: each runbook as a plan of checked, journaled, resumable steps.

``operation(name)`` finds an operation by ``Plan.operation`` (the CLI uses it to apply,
resume or roll back a saved or journaled plan). The built-in operations are imported only
when first asked for, so importing this package stays cheap; ``register`` adds one (tests
register fakes; a registered operation hides a built-in one of the same name).
"""

from __future__ import annotations

from kubeha.errors import InputError
from kubeha.operations.base import Operation

_registered: dict[str, Operation] = {}


def _builtin() -> tuple[Operation, ...]:
    """The operations kubeha ships, imported on first use."""
    from kubeha.operations import endpoint, etcd, masters, nodes, restart

    return (*etcd.OPERATIONS, *masters.OPERATIONS, *restart.OPERATIONS, *nodes.OPERATIONS, *endpoint.OPERATIONS)


def operations() -> dict[str, Operation]:
    """Every known operation by name: the built-in ones, then the registered ones."""
    known = {op.name: op for op in _builtin()}
    known.update(_registered)
    return known


def operation(name: str) -> Operation:
    """The operation named ``name``; InputError (one line, the known names) when there is none."""
    known = operations()
    if name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise InputError(f"unknown operation {name!r}; known operations: {names}")
    return known[name]


def register(op: Operation) -> Operation:
    """Make ``op`` known by its name (until ``unregister``); returns it."""
    if op.name in _registered:
        raise ValueError(f"operation {op.name!r} is registered twice")
    _registered[op.name] = op
    return op


def unregister(name: str) -> None:
    _registered.pop(name, None)


__all__ = ["Operation", "operation", "operations", "register", "unregister"]
