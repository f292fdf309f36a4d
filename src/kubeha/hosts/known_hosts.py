"""Host key checking against an OpenSSH known_hosts file.

asyncssh accepts keys the file lists and asks ``validate_host_public_key`` about any
other. We answer yes only for a host the file does not list at all, and only when
trust-on-first-use was asked for; the key is then appended to the file. A host the file
lists with other keys is refused: that is what a man in the middle looks like.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import asyncssh

from kubeha.errors import HostError

log = logging.getLogger(__name__)

DEFAULT_SSH_PORT = 22


def known_hosts_pattern(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: bare on port 22, else ``[address]:port``."""
    return address if port == DEFAULT_SSH_PORT else f"[{address}]:{port}"


def read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """The file's entries; a missing file lists nothing."""
    try:
        return asyncssh.import_known_hosts(path.read_text())
    except FileNotFoundError:
        return asyncssh.import_known_hosts("")
    except (OSError, ValueError) as e:
        raise HostError(f"cannot read the known hosts file {path}: {e}; fix it or name another") from e


class HostKeyPolicy(asyncssh.SSHClient):
    """One connection's decision on a host key known_hosts does not vouch for."""

    def __init__(self, known_hosts: Path, trust_new: bool) -> None:
        self.known_hosts = known_hosts
        self.trust_new = trust_new
        self.offered_key: asyncssh.SSHKey | None = None
        self.mismatch = False

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.offered_key = key
        # Read the file again: a parallel connection may have just trusted this very key.
        listed = read_known_hosts(self.known_hosts).match(
            host, addr, None if port == DEFAULT_SSH_PORT else port)[0]
        if key in listed:
            return True
        if listed:
            self.mismatch = True
            return False
        if not self.trust_new:
            return False
        self._append(known_hosts_pattern(host, port), key)
        return True

    def _append(self, pattern: str, key: asyncssh.SSHKey) -> None:
        algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(f"{pattern} {algorithm} {blob}\n")
        log.warning("trusted the new host key %s of %s and added it to %s",
                    key.get_fingerprint(), pattern, self.known_hosts)
