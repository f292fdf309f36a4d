"""The availability probe: real API reads through the VIP, each LB and the node-local proxies,
and numbered etcd writes, measured while an operation runs; its timeline and summary."""

from kubeha.probe.probe import ETCD_PATH, READ_PATH, EtcdWriter, Probe, ProbePath, new_run_id
from kubeha.probe.summary import (
    EtcdWritesSummary, PathSummary, ProbeRecord, ProbeSummary, longest_gap, lost_writes, percentile,
    summarize, summarize_path,
)

__all__ = [
    "ETCD_PATH", "READ_PATH", "EtcdWriter", "EtcdWritesSummary", "PathSummary", "Probe", "ProbePath",
    "ProbeRecord", "ProbeSummary", "longest_gap", "lost_writes", "new_run_id", "percentile", "summarize",
    "summarize_path",
]
