"""Verify an etcd snapshot file with the local ``etcdctl`` (etcd 3.4 has no ``etcdutl``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from kubeha.etcd.errors import EtcdError


@dataclass(frozen=True)
class SnapshotStatus:
    hash: int
    revision: int
    total_keys: int
    total_size: int  # bytes


def verify_snapshot(path: str | os.PathLike[str], timeout: float = 60.0) -> SnapshotStatus:
    """Open the snapshot at ``path`` with ``etcdctl snapshot status``; its hash, revision,
    key count and size, or a one-line EtcdError if etcdctl is missing or rejects it."""
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        raise EtcdError("cannot verify the etcd snapshot: etcdctl is not on PATH")
    try:
        done = subprocess.run(
            [etcdctl, "snapshot", "status", os.fspath(path), "-w", "json"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise EtcdError(f"etcdctl snapshot status {path} took over {timeout} s") from e
    try:
        if done.returncode != 0:
            raise ValueError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                             f"exit code {done.returncode}")
        fields = json.loads(done.stdout)
        return SnapshotStatus(hash=int(fields["hash"]), revision=int(fields["revision"]),
                              total_keys=int(fields["totalKey"]), total_size=int(fields["totalSize"]))
    except (ValueError, KeyError, TypeError) as e:
        raise EtcdError(f"etcd snapshot {path} is not valid: {e}") from e
