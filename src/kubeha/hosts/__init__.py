"""Host access over SSH only: commands, files with backups, port forwarding, facts.

    async with Fleet(cluster.hosts, SshSettings(key_file=key)) as fleet:
        outcomes = await fleet.run_all("systemctl is-active etcd")

    async with HostConnection(host, settings) as conn:
        await conn.put_file("/etc/haproxy/haproxy.cfg", text.encode(), backup=BackupSet(op_id))
"""

from kubeha.hosts.backup import DEFAULT_BACKUP_ROOT, BackupEntry, BackupManifest, BackupSet
from kubeha.hosts.connection import Command, CommandResult, HostConnection, SshSettings
from kubeha.hosts.errors import (
    AuthenticationFailed, CommandFailed, CommandTimedOut, HostKeyMismatch, HostKeyUnknown,
    HostUnreachable, SudoRefused,
)
from kubeha.hosts.facts import Fact, gather_fact
from kubeha.hosts.files import FileStat
from kubeha.hosts.fleet import Fleet, HostAction, HostOutcome

__all__ = [
    "AuthenticationFailed", "BackupEntry", "BackupManifest", "BackupSet", "Command",
    "CommandFailed", "CommandResult", "CommandTimedOut", "DEFAULT_BACKUP_ROOT", "Fact",
    "FileStat", "Fleet", "HostAction", "HostConnection", "HostKeyMismatch", "HostKeyUnknown",
    "HostOutcome", "HostUnreachable", "SshSettings", "SudoRefused", "gather_fact",
]
