"""Safety and health checks: one snapshot of the cluster, pure checks over it."""

from kubeha.checks.health import CHECKS, exit_code, run_checks, summary
from kubeha.checks.result import CheckResult, Status
from kubeha.checks.snapshot import ClusterSnapshot, gather_snapshot

__all__ = ["CHECKS", "CheckResult", "ClusterSnapshot", "Status", "exit_code", "gather_snapshot",
           "run_checks", "summary"]
