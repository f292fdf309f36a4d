"""The SSH host layer against a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface
from pathlib import Path

import httpx
import pytest
from helpers.etcd import free_port

from kubeha.hosts import (
    AuthenticationFailed, BackupSet, CommandFailed, CommandTimedOut, FileStat, Fleet,
    HostConnection, HostKeyMismatch, HostKeyUnknown, HostUnreachable, SshSettings,
)
from kubeha.hosts import files
from kubeha.hosts.connection import sudo_refusal
from kubeha.hosts.facts import HOSTNAME, IPV4_ADDRESSES, file_sha256, gather_fact
from kubeha.model import Host

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
AllowTcpForwarding yes
# The fleet test opens 20 connections at once; the default starts dropping after 10.
MaxStartups 100
# bash runs ~/.bashrc for sshd's commands unless SHLVL says it is nested: keep this
# machine's root shell set-up (slow on developer machines) out of the timings.
SetEnv SHLVL=1
"""


@dataclass(frozen=True)
class Sshd:
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    dir: Path


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"sshd did not listen on {port}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    host_key = keygen(d / "host_key")
    keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=d))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = d / "sshd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                   stdout=log_file, stderr=log_file)
    try:
        wait_for_port(port, process, log)
        yield Sshd(port, host_key, d / "client_key", d)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def settings(sshd, tmp_path) -> SshSettings:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n")
    return SshSettings(key_file=sshd.client_key, known_hosts=known_hosts, connect_timeout=5)


def host(sshd: Sshd, name: str = "h1", port: int | None = None) -> Host:
    return Host(name=name, address="127.0.0.1", ssh_port=port or sshd.port)


def on_host(sshd: Sshd, settings: SshSettings, action):
    """Open a connection, ``await action(conn)``, close; returns what action returned."""
    async def main():
        async with HostConnection(host(sshd), settings) as conn:
            return await action(conn)
    return asyncio.run(main())


def connect_error(sshd: Sshd, settings: SshSettings) -> pytest.ExceptionInfo:
    with pytest.raises(Exception) as caught:
        on_host(sshd, settings, lambda conn: asyncio.sleep(0))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("h1: ")
    return caught


# --- commands ---------------------------------------------------------------------------

def test_run_output_exit_status_and_stdin(sshd, settings):
    async def action(conn: HostConnection):
        done = await conn.run("echo out; echo err >&2")
        assert (done.exit_status, done.stdout, done.stderr) == (0, "out\n", "err\n")
        assert (await conn.run(["printf", "%s|", "a b", "it's"])).stdout == "a b|it's|"
        assert (await conn.run("exit 3", check=False)).exit_status == 3
        assert (await conn.run("cat", input="from stdin")).stdout == "from stdin"
        assert (await conn.run("cat")).stdout == ""  # no input: EOF, not a hang
        with pytest.raises(CommandFailed) as failed:
            await conn.run("echo first >&2; echo last words >&2; exit 5")
        assert str(failed.value) == ("h1: `echo first >&2; echo last words >&2; exit 5` failed "
                                     "with exit status 5: last words")
        with pytest.raises(CommandFailed) as secret:
            await conn.run(["sh", "-c", "exit 1", "s3cret-token"], sensitive=True)
        message = str(secret.value)
        assert "s3cret-token" not in message and "`sh` (arguments hidden)" in message
        with pytest.raises(CommandTimedOut, match="did not finish within 0.3 s"):
            await conn.run("sleep 5", timeout=0.3)

    on_host(sshd, settings, action)


def test_sudo_is_not_used_as_root(sshd, settings):
    as_root = replace(settings, sudo=True)
    conn = HostConnection(host(sshd), as_root)
    assert not conn.uses_sudo and conn.command_line("id -u") == "id -u"
    assert on_host(sshd, as_root, lambda c: c.run("id -u")).stdout == "0\n"

    deploy = HostConnection(host(sshd), replace(as_root, user="deploy"))
    assert deploy.command_line("id -u && ls") == "sudo -n -- sh -c 'id -u && ls'"
    assert deploy.command_line(["systemctl", "restart", "etcd"]) == "sudo -n -- systemctl restart etcd"
    assert sudo_refusal("sudo: a password is required\n") == "sudo: a password is required"
    assert sudo_refusal("cat: /x: No such file or directory\n") is None


# --- connecting -------------------------------------------------------------------------

def test_unknown_host_key_is_refused_unless_trusted(sshd, settings):
    settings.known_hosts.write_text("")
    caught = connect_error(sshd, settings)
    assert caught.type is HostKeyUnknown
    assert str(caught.value).endswith(
        f"is not in {settings.known_hosts}: verify it and add it, or pass --trust-new-host-keys")

    on_host(sshd, replace(settings, trust_new_host_keys=True), lambda c: c.run("true"))
    assert settings.known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n"
    on_host(sshd, settings, lambda c: c.run("true"))  # now known, without the flag


def test_mismatched_host_key_is_refused_even_with_trust(sshd, settings, tmp_path):
    other_key = keygen(tmp_path / "other_host_key")
    settings.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other_key}\n")
    for trust in (False, True):
        caught = connect_error(sshd, replace(settings, trust_new_host_keys=trust))
        assert caught.type is HostKeyMismatch and "man in the middle" in str(caught.value)
    assert settings.known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {other_key}\n"


def test_wrong_client_key_names_user_and_key(sshd, settings, tmp_path):
    keygen(tmp_path / "stranger")
    caught = connect_error(sshd, replace(settings, key_file=tmp_path / "stranger"))
    assert caught.type is AuthenticationFailed
    assert f"SSH login as root at [127.0.0.1]:{sshd.port} with the key {tmp_path / 'stranger'} " \
           f"was refused" in str(caught.value)


# --- files ------------------------------------------------------------------------------

def test_get_file_and_stat(sshd, settings, tmp_path):
    binary = bytes(range(256)) * 3
    (tmp_path / "blob").write_bytes(binary)
    os.chown(tmp_path / "blob", 1234, 1234)
    os.chmod(tmp_path / "blob", 0o4750)

    async def action(conn: HostConnection):
        assert await conn.get_file(tmp_path / "missing") is None
        assert await conn.stat(tmp_path / "missing") is None
        assert await conn.get_file(tmp_path / "blob") == binary
        assert await conn.stat(tmp_path / "blob") == FileStat(0o4750, 1234, 1234, len(binary))
        await conn.put_file(tmp_path / "empty", b"", backup=BackupSet("op-empty", tmp_path / "b"))
        assert await conn.get_file(tmp_path / "empty") == b""

    on_host(sshd, settings, action)


def test_get_files_reads_many_in_one_command(sshd, settings, tmp_path):
    binary = bytes(range(256)) * 3
    (tmp_path / "blob").write_bytes(binary)
    (tmp_path / "lines").write_bytes(b"a\n\nb\r\n-\n+")  # newlines and the markers inside
    (tmp_path / "empty").write_bytes(b"")
    paths = [tmp_path / "blob", tmp_path / "missing", tmp_path / "lines", tmp_path / "empty"]

    async def action(conn: HostConnection):
        assert await conn.get_files(paths) == [binary, None, b"a\n\nb\r\n-\n+", b""]
        assert await conn.get_files([]) == []
        (tmp_path / "unreadable").mkdir()
        with pytest.raises(CommandFailed):  # a directory: base64 cannot read it, so no answer at all
            await conn.get_files([tmp_path / "blob", tmp_path / "unreadable"])

    on_host(sshd, settings, action)


def test_parse_read_many_refuses_output_that_does_not_match():
    assert files.parse_read_many(b"-\n+aGk=\n+\n", 3) == [None, b"hi", b""]
    for stdout, count in ((b"-\n", 2), (b"hi\n", 1), (b"+!!\n", 1)):
        with pytest.raises(ValueError):
            files.parse_read_many(stdout, count)


def test_put_file_is_atomic_and_sets_mode_and_owner(sshd, settings, tmp_path):
    target = tmp_path / "etc" / "big.conf"
    contents = (b"a" * 2**20, b"b" * 2**20)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(target.read_bytes())
            except FileNotFoundError:
                pass

    backup = BackupSet("op-atomic", root=tmp_path / "backups")

    async def action(conn: HostConnection):
        await conn.put_file(target, contents[0], mode=0o600, owner="1234:1234", backup=backup)
        thread = threading.Thread(target=reader)
        with target.open("rb") as opened_before:
            thread.start()
            try:
                for i in range(6):
                    await conn.put_file(target, contents[(i + 1) % 2], backup=backup)
            finally:
                stop.set()
                thread.join()
            assert opened_before.read() == contents[0]  # replaced by rename, not rewritten

    on_host(sshd, settings, action)
    assert seen <= set(contents) and seen, "a reader saw a partial file"
    st = target.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 1234)  # kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.conf"]  # no temp files left


def test_put_file_failure_names_path_but_not_content(sshd, settings, tmp_path):
    (tmp_path / "plain").write_text("x")

    async def action(conn: HostConnection):
        await conn.put_file(tmp_path / "plain" / "f", b"TOP-SECRET",
                            backup=BackupSet("op-x", tmp_path))

    with pytest.raises(CommandFailed) as failed:
        on_host(sshd, settings, action)
    assert str(failed.value).startswith(f"h1: writing {tmp_path}/plain/f failed")
    assert "TOP-SECRET" not in str(failed.value)


def test_backup_and_restore_round_trip(sshd, settings, tmp_path):
    edited, created, removed, key = (tmp_path / name for name in
                                     ("edited.conf", "new.conf", "gone.conf", "k.key"))
    edited.write_bytes(b"original\n")
    os.chown(edited, 1234, 1234)
    os.chmod(edited, 0o640)
    removed.write_bytes(b"will come back\n")
    os.chmod(removed, 0o604)
    backup = BackupSet("op-1", root=tmp_path / "backups")

    async def change(conn: HostConnection):
        await conn.put_file(edited, b"first edit\n", backup=backup)
        await conn.put_file(edited, b"second edit\n", mode=0o644, owner="0:0", backup=backup)
        await conn.put_file(created, b"brand new\n", backup=backup)
        await conn.remove_file(removed, backup=backup)
        await conn.put_file(key, b"PRIVATE KEY\n", mode=0o600, backup=backup)

    on_host(sshd, settings, change)
    assert edited.read_bytes() == b"second edit\n" and not removed.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(created.stat().st_mode) == 0o644
    assert stat.S_IMODE(Path(backup.directory).stat().st_mode) == 0o700
    manifest_file = Path(backup.manifest_path)
    assert stat.S_IMODE(manifest_file.stat().st_mode) == 0o600
    manifest = json.loads(manifest_file.read_text())
    assert [(e["path"], e["existed"]) for e in manifest["entries"]] == [
        (str(edited), True), (str(created), False), (str(removed), True), (str(key), False)]
    assert manifest["entries"][0] | {"saved_as": None} == {
        "path": str(edited), "existed": True, "saved_as": None, "mode": 0o640, "uid": 1234,
        "gid": 1234, "size": 9}

    restored = on_host(sshd, settings, lambda conn: conn.restore(backup))
    assert len(restored) == 4
    assert edited.read_bytes() == b"original\n"
    st = edited.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 1234)
    assert removed.read_bytes() == b"will come back\n"
    assert stat.S_IMODE(removed.stat().st_mode) == 0o604
    assert not created.exists() and not key.exists()
    untouched = BackupSet("op-never", root=tmp_path / "backups")
    assert on_host(sshd, settings, lambda conn: conn.restore(untouched)) == ()


# --- many hosts, tunnels ----------------------------------------------------------------

def test_fleet_one_bad_host_does_not_stop_the_others(sshd, settings):
    hosts = [host(sshd, f"h{i:02d}") for i in range(20)] + [host(sshd, "bad", free_port())]

    async def main():
        started = time.monotonic()
        async with Fleet(hosts, settings) as fleet:
            opened = time.monotonic() - started
            names = await fleet.run_all(["sh", "-c", "echo $PPID"])
            failing = await fleet.run_all(lambda c: c.run("exit 1" if c.name == "h03" else "true"))
            with pytest.raises(HostUnreachable):
                fleet["bad"]
        return opened, names, failing

    opened, names, failing = asyncio.run(main())
    print(f"opened 20 connections in {opened * 1000:.0f} ms")
    assert list(names) == [h.name for h in hosts]
    assert all(names[f"h{i:02d}"].ok for i in range(20))
    assert len({names[f"h{i:02d}"].value.stdout for i in range(20)}) == 20  # 20 distinct sessions
    assert isinstance(names["bad"].error, HostUnreachable)
    assert "Connection refused" in str(names["bad"].error)
    assert isinstance(failing["h03"].error, CommandFailed)
    assert sum(o.ok for o in failing.values()) == 19


def test_forward_local_reaches_a_server_through_the_host(sshd, settings):
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello through the tunnel")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()

    async def action(conn: HostConnection):
        async with conn.forward_local("127.0.0.1", server.server_port) as local_port:
            assert local_port != server.server_port
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{local_port}/")).text

    try:
        assert on_host(sshd, settings, action) == "hello through the tunnel"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_latency_of_a_command_on_an_open_connection(sshd, settings):
    async def action(conn: HostConnection):
        started = time.monotonic()
        for _ in range(20):
            await conn.run("true")
        return (time.monotonic() - started) / 20

    print(f"`true` round trip: {on_host(sshd, settings, action) * 1000:.1f} ms")


def test_gather_facts(sshd, settings, tmp_path):
    (tmp_path / "f").write_bytes(b"")

    async def action(conn: HostConnection):
        return (await gather_fact(conn, HOSTNAME), await gather_fact(conn, IPV4_ADDRESSES),
                await gather_fact(conn, file_sha256(tmp_path / "f")),
                await gather_fact(conn, file_sha256(tmp_path / "missing")))

    hostname, addresses, digest, missing = on_host(sshd, settings, action)
    assert hostname == socket.gethostname()
    assert IPv4Interface("127.0.0.1/8") in [a.address for a in addresses]
    assert digest == hashlib.sha256(b"").hexdigest() and missing is None


def test_a_connection_dropped_mid_command_is_unreachable_not_a_failed_command(sshd, settings):
    async def drop(conn):
        with pytest.raises(HostUnreachable, match="h1: the SSH connection broke while running .*no exit status"):
            await conn.run("kill -9 $PPID; sleep 5")  # $PPID: this session's sshd

    on_host(sshd, settings, drop)


def test_silent_port_times_out_as_unreachable(sshd, settings):
    with socket.socket() as silent:  # accepts TCP (backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        quiet_host = host(sshd, port=silent.getsockname()[1])

        async def main():
            async with HostConnection(quiet_host, replace(settings, connect_timeout=0.5)):
                pass

        with pytest.raises(HostUnreachable, match=r"^h1: no SSH answer from .* within 0.5 s; "):
            asyncio.run(main())


def test_a_write_whose_bytes_were_cut_short_leaves_the_target_as_it_was(tmp_path):
    """The sender SIGKILLed mid-transfer closes stdin: the script sees an early end of file."""
    from kubeha.hosts.files import install_command
    target = tmp_path / "apiserver.crt"
    target.write_bytes(b"old whole file\n")
    cut = subprocess.run(install_command(str(target), "/dev/stdin", 0o644, None, size=100), input=b"-----BEGIN",
                         capture_output=True)
    assert cut.returncode == 1 and b"received 10 of 100 bytes" in cut.stderr
    assert target.read_bytes() == b"old whole file\n" and [p.name for p in tmp_path.iterdir()] == ["apiserver.crt"]
    whole = subprocess.run(install_command(str(target), "/dev/stdin", 0o644, None, size=10), input=b"-----BEGIN")
    assert whole.returncode == 0 and target.read_bytes() == b"-----BEGIN"
