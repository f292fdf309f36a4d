"""What can go wrong reaching a host or running something on it.

Each error is one line naming the host, saying what is wrong and what to do. Messages
never carry file contents nor the arguments of a command marked sensitive.
"""

from __future__ import annotations

from kubeha.errors import HostError


class HostUnreachable(HostError):
    """No SSH connection: refused, timed out, no route, or lost."""


class HostKeyUnknown(HostError):
    """The host's key is not in known_hosts and trust-on-first-use was not asked for."""


class HostKeyMismatch(HostError):
    """known_hosts lists other keys for the host: possibly a man in the middle."""


class AuthenticationFailed(HostError):
    """The host refused the SSH login, or the client key could not be used."""


class SudoRefused(HostError):
    """sudo wants a password or does not allow the user."""


class CommandTimedOut(HostError):
    """A command did not finish in time."""


class CommandFailed(HostError):
    """A command exited with a status its caller does not accept."""

    def __init__(self, host: str, what: str, exit_status: int, stderr: str) -> None:
        self.host = host
        self.what = what
        self.exit_status = exit_status
        lines = stderr.strip().splitlines()
        self.stderr_tail = lines[-1].strip() if lines else ""
        detail = f": {self.stderr_tail}" if self.stderr_tail else " (no error output)"
        super().__init__(f"{host}: {what} failed with exit status {exit_status}{detail}")
