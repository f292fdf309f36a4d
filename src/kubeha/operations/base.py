"""What every operation gives the CLI and the engine.

An ``Operation`` turns the operator's arguments and a look at the cluster into a ``Plan``
(pure planning over a snapshot; no host is changed), and knows the step kinds and safety
checks its plans name (``registry``) and how to look at the cluster before each step
(``view_factory``). The CLI finds an operation by ``Plan.operation`` to apply, resume or
roll back a journaled plan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from kubeha.access import ClusterAccess
from kubeha.errors import InputError
from kubeha.inventory import Inventory
from kubeha.plan import Plan, Registry, ViewFactory


class Operation(ABC):
    name: ClassVar[str]  # Plan.operation of its plans, e.g. "etcd-migrate"
    registry: ClassVar[Registry]

    @abstractmethod
    def make_plan(self, access: ClusterAccess, inventory: Inventory, inventory_path: Path,
                  arguments: Mapping[str, str]) -> Plan:
        """The plan for ``arguments`` on the cluster as ``access`` sees it now; InputError or
        PlanError (one line, every reason) when the operation would be unsafe or is impossible."""

    def check_arguments(self, inventory: Inventory, arguments: Mapping[str, str]) -> None:
        """InputError (one line, every reason) for ``arguments`` that name no possible change of
        the inventory's cluster. Pure: the CLI asks it before any host is touched; an operation
        whose arguments need no look at the inventory has nothing to refuse here."""

    @abstractmethod
    def view_factory(self, access: ClusterAccess, plan: Plan) -> ViewFactory:
        """A fresh look at the cluster, taken before each decision of the engine."""

    def etcd_endpoints(self, plan: Plan, inventory: Inventory) -> tuple[str, ...]:
        """Every etcd client URL the run may need (the cluster lock and the probe use them):
        an operation that changes etcd members lists the members before and after."""
        return inventory.cluster.etcd_client_urls()

    def retiring_lb_hosts(self, plan: Plan, inventory: Inventory) -> tuple[str, ...]:
        """LB hosts the plan stops serving (the probe sends them nothing: their silence is
        the plan's, not an outage)."""
        return ()

    def left_to_do(self, access: ClusterAccess, plan: Plan, inventory: Inventory) -> list[str]:
        """What a finished run leaves to the operator (things kubeha does not change), one line each."""
        return []

    def inventory_matches(self, plan: Plan, digest: str) -> bool:
        """Whether the current inventory (``digest``) is one this plan can run on: the one it
        was made from, or (for an operation that rewrites the inventory) its result."""
        return digest == plan.inventory_digest


def refuse_input(operation: str, reasons: Sequence[str]) -> None:
    """InputError naming every reason (one line), when there is one."""
    if reasons:
        raise InputError(f"{operation} refused: " + "; ".join(reasons))
