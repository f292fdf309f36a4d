"""Every check, run on one snapshot; the verdict of all of them.

Each check is a pure function ``(ClusterSnapshot) -> list[CheckResult]``: it lists every
reason it finds (not just the first), so one run shows everything to fix.
"""

from __future__ import annotations

from kubeha.checks.certs import CERT_CHECKS
from kubeha.checks.endpoints import ENDPOINT_CHECKS
from kubeha.checks.etcd import ETCD_CHECKS
from kubeha.checks.hosts import HOST_CHECKS
from kubeha.checks.result import Check, CheckResult, Status
from kubeha.checks.snapshot import ClusterSnapshot

CHECKS: tuple[Check, ...] = HOST_CHECKS + ETCD_CHECKS + ENDPOINT_CHECKS + CERT_CHECKS

EXIT_PASS, EXIT_FAIL, EXIT_WARN = 0, 1, 2


def run_checks(snapshot: ClusterSnapshot, checks: tuple[Check, ...] = CHECKS) -> list[CheckResult]:
    return [result for check in checks for result in check(snapshot)]


def exit_code(results: list[CheckResult]) -> int:
    """0 when every check passes, 1 when any fails, 2 when some only warn."""
    statuses = {r.status for r in results}
    if Status.FAIL in statuses:
        return EXIT_FAIL
    return EXIT_WARN if Status.WARN in statuses else EXIT_PASS


def summary(results: list[CheckResult]) -> str:
    counts = {s: sum(r.status is s for r in results) for s in Status}
    return ", ".join(f"{counts[s]} {s.value}ed" for s in Status)  # passed, warned, failed
