"""One SSH connection to one host: commands, files with backups, port forwarding.

Foreign errors (asyncssh, OSError, timeouts) become the one-line errors of
``kubeha.hosts.errors`` here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import textwrap
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Self

import asyncssh
import pydantic

from kubeha.errors import HostError
from kubeha.hosts import files
from kubeha.hosts.backup import BackupEntry, BackupManifest, BackupSet
from kubeha.hosts.errors import (
    AuthenticationFailed, CommandFailed, CommandTimedOut, HostKeyMismatch, HostKeyUnknown,
    HostUnreachable, SudoRefused,
)
from kubeha.hosts.files import FileStat
from kubeha.hosts.known_hosts import HostKeyPolicy, known_hosts_pattern, read_known_hosts
from kubeha.model import Host

log = logging.getLogger(__name__)

Command = str | Sequence[str]

# OpenSSH allows 10 sessions per connection (MaxSessions); stay under it.
_SESSIONS_PER_CONNECTION = 8
# A host that stops answering (its network cut) is given up after asyncssh's 3 unanswered
# keepalives and one more interval: 40 s, where 30 s made a step wait 2 minutes on it.
_KEEPALIVE_SECONDS = 10
_SUDO_REFUSALS = ("a password is required", "is not in the sudoers file",
                  "is not allowed to execute", "a terminal is required")


@dataclass(frozen=True)
class SshSettings:
    user: str | None = None  # None: each host's ssh_user
    port: int | None = None  # None: each host's ssh_port
    key_file: Path | None = None  # None: the SSH agent and the default keys in ~/.ssh
    known_hosts: Path = field(default_factory=lambda: Path.home() / ".ssh" / "known_hosts")
    trust_new_host_keys: bool = False  # trust on first use, appending the key to known_hosts
    connect_timeout: float = 10.0
    command_timeout: float = 300.0
    sudo: bool = False  # run commands through `sudo -n` when the user is not root
    max_parallel: int = 64  # connections a Fleet opens or drives at once


@dataclass(frozen=True)
class CommandResult:
    exit_status: int  # negative: killed by that signal
    stdout: str
    stderr: str


def describe_command(command: Command, *, sensitive: bool = False) -> str:
    """The command as error messages show it: its name only when its arguments are secret."""
    line = command if isinstance(command, str) else shlex.join(command)
    if sensitive:
        return f"`{(line.split() or [''])[0]}` (arguments hidden)"
    return f"`{textwrap.shorten(line, 80, placeholder=' ...')}`"


def sudo_refusal(stderr: str) -> str | None:
    """The line where sudo says it will not run the command, if it says so."""
    return next((line.strip() for line in stderr.splitlines()
                 if any(refusal in line for refusal in _SUDO_REFUSALS)), None)


def _posix_path(path: str | PurePosixPath) -> str:
    if not PurePosixPath(path).is_absolute():
        raise ValueError(f"{path} is not an absolute path")
    return str(path)


class OpenedWhileUsed:
    """``async with`` opens on entry and closes on exit."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class HostConnection(OpenedWhileUsed):
    """``async with HostConnection(host, settings) as conn:`` -- one host, one connection."""

    def __init__(self, host: Host, settings: SshSettings) -> None:
        self.host = host
        self.settings = settings
        self.user = settings.user or host.ssh_user
        self.port = settings.port or host.ssh_port
        self._ssh: asyncssh.SSHClientConnection | None = None
        self._sessions = asyncio.Semaphore(_SESSIONS_PER_CONNECTION)
        # Backing up reads and rewrites the manifest: one file at a time.
        self._backup_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def uses_sudo(self) -> bool:
        return self.settings.sudo and self.user != "root"

    async def open(self) -> None:
        settings = self.settings
        policy = HostKeyPolicy(settings.known_hosts, settings.trust_new_host_keys)
        key_options: dict[str, object] = {}
        if settings.key_file is not None:
            # An explicit key is the only identity offered: no agent keys muddle which one failed.
            key_options = {"client_keys": [self._read_key()], "agent_path": None}
        known_hosts = read_known_hosts(settings.known_hosts)
        try:
            self._ssh = await asyncssh.connect(
                str(self.host.address), self.port, username=self.user, known_hosts=known_hosts,
                client_factory=lambda: policy, connect_timeout=settings.connect_timeout,
                keepalive_interval=_KEEPALIVE_SECONDS, config=None, **key_options)
        except (asyncssh.Error, OSError) as e:
            raise self._connect_error(e, policy) from e

    def _connect_error(self, e: asyncssh.Error | OSError, policy: HostKeyPolicy) -> HostError:
        settings = self.settings
        where = known_hosts_pattern(str(self.host.address), self.port)
        if isinstance(e, asyncssh.HostKeyNotVerifiable):
            if policy.offered_key is None:
                return HostKeyMismatch(f"{self.name}: the host key of {where} was rejected "
                                       f"({e.reason}); check {settings.known_hosts}")
            fingerprint = policy.offered_key.get_fingerprint()
            if policy.mismatch:
                return HostKeyMismatch(
                    f"{self.name}: the host key of {where} ({fingerprint}) is not the one in "
                    f"{settings.known_hosts}: possibly a man in the middle, refusing to connect; "
                    f"if the host was reinstalled, verify the new key and replace its line")
            return HostKeyUnknown(
                f"{self.name}: the host key of {where} ({fingerprint}) is not in "
                f"{settings.known_hosts}: verify it and add it, or pass --trust-new-host-keys")
        if isinstance(e, asyncssh.PermissionDenied):
            identity = (f"the key {settings.key_file}" if settings.key_file
                        else "the SSH agent's and ~/.ssh's default keys")
            return AuthenticationFailed(
                f"{self.name}: SSH login as {self.user} at {where} with {identity} was refused; "
                f"add the public key to {self.user}'s authorized_keys there, or use the right key")
        if isinstance(e, TimeoutError):
            return HostUnreachable(
                f"{self.name}: no SSH answer from {where} within {settings.connect_timeout:g} s; "
                f"check that the host is up and the address is right")
        if isinstance(e, OSError):
            reason = os.strerror(e.errno) if e.errno else str(e)
            return HostUnreachable(
                f"{self.name}: cannot reach SSH at {where}: {reason}; check that the host is up, "
                f"sshd listens on port {self.port} and no firewall is in the way")
        return HostUnreachable(f"{self.name}: the SSH handshake with {where} failed: {e.reason}; "
                               f"check sshd on the host")

    def _read_key(self) -> asyncssh.SSHKey:
        key_file = self.settings.key_file
        try:
            return asyncssh.read_private_key(key_file)
        except (OSError, asyncssh.KeyImportError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise AuthenticationFailed(
                f"{self.name}: cannot use the SSH key {key_file}: {reason}; give a readable key "
                f"without a passphrase, or load it into ssh-agent and give no key file") from e

    async def close(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
            await self._ssh.wait_closed()
            self._ssh = None

    def command_line(self, command: Command) -> str:
        """The exact line sent to the host: lists shell-quoted, with `sudo -n` if it is used."""
        if self.uses_sudo:
            return shlex.join(["sudo", "-n", "--", "sh", "-c", command] if isinstance(command, str)
                              else ["sudo", "-n", "--", *command])
        return command if isinstance(command, str) else shlex.join(command)

    async def run(self, command: Command, *, check: bool = True, timeout: float | None = None,
                  input: str | bytes | None = None, sensitive: bool = False) -> CommandResult:
        """Run a command; with ``check``, any exit status but 0 raises CommandFailed."""
        data = input.encode() if isinstance(input, str) else input
        done = await self._execute(command, describe_command(command, sensitive=sensitive),
                                   input=data, timeout=timeout, accept=(0,) if check else None)
        return CommandResult(done.returncode, _text(done.stdout), _text(done.stderr))

    async def _execute(self, command: Command, what: str, *, input: bytes | None = None,
                       timeout: float | None = None,
                       accept: Collection[int] | None = (0,)) -> asyncssh.SSHCompletedProcess:
        """Run ``command`` (shown as ``what``); an exit status not in ``accept`` raises."""
        ssh = self._connected()
        timeout = self.settings.command_timeout if timeout is None else timeout
        # No input means EOF at once: a command reading stdin must not wait forever.
        stdin = {"input": input} if input else {"stdin": asyncssh.DEVNULL}
        log.debug("%s: running %s", self.name, what)
        try:
            async with self._sessions:
                process = await ssh.create_process(self.command_line(command), encoding=None, **stdin)
                try:
                    done = await process.wait(timeout=timeout)
                finally:
                    process.close()  # after a timeout too: free the session for the next command
        except asyncssh.TimeoutError as e:
            raise CommandTimedOut(f"{self.name}: {what} did not finish within {timeout:g} s; "
                                  f"check the host, or allow more time if it is only slow") from e
        except (asyncssh.Error, OSError) as e:
            reason = e.reason if isinstance(e, asyncssh.Error) else str(e)
            raise HostUnreachable(f"{self.name}: the SSH connection broke while running {what}: "
                                  f"{reason}; check the host and retry") from e
        if done.returncode is None:  # the channel closed without an exit status: the connection dropped
            raise HostUnreachable(f"{self.name}: the SSH connection broke while running {what}: no exit status "
                                  f"came back; check the host and retry")
        stderr = _text(done.stderr)
        if self.uses_sudo and done.returncode == 1 and (refusal := sudo_refusal(stderr)):
            raise SudoRefused(f"{self.name}: sudo refused to run {what} as root for {self.user} "
                              f"({refusal}); allow {self.user} passwordless sudo, or connect as root")
        if accept is not None and done.returncode not in accept:
            raise CommandFailed(self.name, what, done.returncode, stderr)
        return done

    def _connected(self) -> asyncssh.SSHClientConnection:
        if self._ssh is None:
            raise RuntimeError(f"the connection to {self.name} is not open")
        return self._ssh

    async def get_file(self, path: str | PurePosixPath) -> bytes | None:
        """The file's content, or None if there is no such file."""
        path = _posix_path(path)
        done = await self._execute(files.read_command(path), f"reading {path}",
                                   accept=(0, files.MISSING))
        return None if done.returncode == files.MISSING else done.stdout

    async def get_files(self, paths: Sequence[str | PurePosixPath]) -> list[bytes | None]:
        """Each file's content (None where there is no such file), all read in one command."""
        wanted = [_posix_path(path) for path in paths]
        if not wanted:
            return []
        what = f"reading {_first_paths(wanted)}"
        done = await self._execute(files.read_many_command(wanted), what)
        try:
            return files.parse_read_many(done.stdout, len(wanted))
        except ValueError as e:
            raise HostError(f"{self.name}: {what}: {e}") from e

    async def stat(self, path: str | PurePosixPath) -> FileStat | None:
        path = _posix_path(path)
        done = await self._execute(files.stat_command(path), f"inspecting {path}",
                                   accept=(0, files.MISSING))
        return None if done.returncode == files.MISSING else files.parse_stat(_text(done.stdout))

    async def put_file(self, path: str | PurePosixPath, content: bytes, *, mode: int | None = None,
                       owner: str | None = None, backup: BackupSet) -> None:
        """Replace the file atomically, after saving what was there in ``backup``.

        ``mode`` and ``owner`` ("user:group", names or ids) default to those of the file
        replaced, else 0644 and root. Missing parent directories are made.
        """
        await self.put_files({path: (content, mode)}, owner=owner, backup=backup)

    async def put_files(self, contents: Mapping[str | PurePosixPath, tuple[bytes, int | None]], *,
                        owner: str | None = None, backup: BackupSet) -> None:
        """``put_file`` for each path -> (content, mode), every one backed up first in one go."""
        wanted = {_posix_path(path): pair for path, pair in contents.items()}
        await self._back_up(list(wanted), backup)
        for path, (content, mode) in wanted.items():
            await self._install(path, "/dev/stdin", mode, owner, f"writing {path}", content)

    async def remove_file(self, path: str | PurePosixPath, *, backup: BackupSet) -> None:
        await self.remove_files([path], backup=backup)

    async def remove_files(self, paths: Sequence[str | PurePosixPath], *, backup: BackupSet) -> None:
        """Remove the files (absent ones are fine), every one backed up first."""
        wanted = [_posix_path(path) for path in paths]
        if wanted:
            await self._back_up(wanted, backup)
            await self._execute(files.remove_command(*wanted), f"removing {_first_paths(wanted)}")

    async def restore(self, backup: BackupSet, paths: Sequence[str | PurePosixPath] | None = None
                      ) -> tuple[BackupEntry, ...]:
        """Put every file the backup saved back as it was (or only ``paths`` of them);
        returns the entries restored."""
        manifest = await self._read_manifest(backup)
        if manifest is None:
            return ()  # the operation changed nothing on this host
        wanted = None if paths is None else {str(_posix_path(path)) for path in paths}
        entries = tuple(e for e in manifest.entries if wanted is None or e.path in wanted)
        for entry in reversed(entries):
            if entry.existed:
                await self._install(entry.path, str(backup.directory / entry.saved_as), entry.mode,
                                    f"{entry.uid}:{entry.gid}", f"restoring {entry.path}")
            else:
                await self._execute(files.remove_command(entry.path), f"removing {entry.path}")
        return entries

    async def _install(self, path: str, source: str, mode: int | None, owner: str | None,
                       what: str, content: bytes | None = None) -> None:
        size = None if content is None else len(content)
        await self._execute(files.install_command(path, source, mode, owner, size), what, input=content)

    async def _back_up(self, paths: Sequence[str], backup: BackupSet) -> None:
        """Save each file as it is now, unless this operation already did (the first save is
        the state to restore): one command copies them all, one write records them."""
        async with self._backup_lock:
            manifest = (await self._read_manifest(backup)
                        or BackupManifest(operation_id=backup.operation_id, host=self.name))
            todo = [path for path in dict.fromkeys(paths) if manifest.entry(path) is None]
            if not todo:
                return
            names = [manifest.saved_name(path, later=i) for i, path in enumerate(todo)]
            done = await self._execute(
                files.save_copies_command((path, str(backup.directory / name)) for path, name in zip(todo, names)),
                f"backing up {_first_paths(todo)}")
            stats = files.parse_saved(_text(done.stdout))
            if len(stats) != len(todo):
                raise HostError(f"{self.name}: backing up {len(todo)} files printed {len(stats)} results")
            entries = [BackupEntry(path=path, existed=False) if st is None else
                       BackupEntry(path=path, existed=True, saved_as=name, mode=st.mode, uid=st.uid, gid=st.gid,
                                   size=st.size)
                       for path, name, st in zip(todo, names, stats)]
            await self._install(str(backup.manifest_path), "/dev/stdin", 0o600, None,
                                f"writing the backup manifest {backup.manifest_path}",
                                manifest.with_entries(*entries).model_dump_json(indent=2).encode())

    async def _read_manifest(self, backup: BackupSet) -> BackupManifest | None:
        raw = await self.get_file(backup.manifest_path)
        if raw is None:
            return None
        try:
            return BackupManifest.model_validate_json(raw)
        except pydantic.ValidationError as e:
            raise HostError(f"{self.name}: the backup manifest {backup.manifest_path} is damaged "
                            f"({e.error_count()} errors); inspect it before restoring by hand") from e

    @contextlib.asynccontextmanager
    async def forward_local(self, remote_host: str, remote_port: int) -> AsyncIterator[int]:
        """A port on 127.0.0.1 here whose connections reach remote_host:remote_port as seen
        from this host."""
        listener = await self._connected().forward_local_port("127.0.0.1", 0, remote_host, remote_port)
        try:
            yield listener.get_port()
        finally:
            listener.close()
            await listener.wait_closed()


def _first_paths(paths: Sequence[str]) -> str:
    """Paths as a message names them: the first three, then how many more."""
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""
