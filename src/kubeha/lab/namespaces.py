"""Lab hosts as Linux namespaces: one network, mount and UTS namespace per host.

Every object of a lab carries its lab's prefix (netns ``kh<id>-<host>``, bridge
``khbr<id>``, veths ``khv<id>_<n>``) so that a stale lab can be found and removed after a
crash without any state, and labs with different ids can run side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from kubeha.errors import LabError


@dataclass(frozen=True)
class LabNames:
    """The names of one lab's kernel objects; ``lab_id`` is empty or up to 3 digits."""

    lab_id: str = ""

    @property
    def netns_prefix(self) -> str:
        return f"kh{self.lab_id}-"

    @property
    def bridge(self) -> str:
        return f"khbr{self.lab_id or 0}"

    @property
    def veth_prefix(self) -> str:
        return f"khv{self.lab_id}_"

    @classmethod
    def from_env(cls) -> LabNames:
        """The lab of ``KUBEHA_LAB_ID`` (unset: the default lab)."""
        lab_id = os.environ.get("KUBEHA_LAB_ID", "")
        if lab_id and not (lab_id.isdigit() and int(lab_id) <= 255):
            raise LabError(f"KUBEHA_LAB_ID={lab_id!r} must be a number from 0 to 255")
        return cls(lab_id)

    @property
    def default_subnet(self) -> IPv4Network:
        return IPv4Network(f"10.212.{int(self.lab_id or 0)}.0/24")

    @property
    def state_dir(self) -> Path:
        return Path(f"/var/lib/kubeha-lab{'-' + self.lab_id if self.lab_id else ''}")

    def netns(self, host: str) -> str:
        return f"{self.netns_prefix}{host}"

    def veth(self, index: int) -> str:
        return f"{self.veth_prefix}{index}"

# Directories every lab host gets a private copy of; the rest of the file system is shared.
HOST_PRIVATE_DIRS = (
    "/etc/kubernetes",
    "/etc/etcd",
    "/var/lib/etcd",
    "/etc/haproxy",
    "/var/lib/haproxy",  # the server-state-file
    "/etc/keepalived",
    "/etc/nginx",
    "/etc/systemd/system",
    "/var/lib/kubelet",
    "/var/lib/kube-proxy",
    "/var/lib/kubeha",
    "/etc/calico",
    "/var/log",
    "/run",
    "/root/.ssh",  # not all of /root: the machine's Python may live there (pyenv)
    "/root/.kube",
    "/etc/ssh",
    "/etc/sudoers.d",
    "/home",
    "/usr/local/bin",
)
# root's shell start-up files, replaced by empty ones on every host where the machine has
# them: sshd runs every command through bash, which reads ~/.bashrc; this machine's (pyenv
# init) costs 170 ms of CPU, about a second under load, at each of kubeha's SSH commands.
ROOT_SHELL_FILES = tuple(f for f in ("/root/.bashrc", "/root/.profile") if Path(f).is_file())
HOST_PRIVATE_FILES = ("/etc/hosts", "/etc/passwd", "/etc/group", "/etc/shadow", *ROOT_SHELL_FILES)
# Commands replaced on every host by the lab's stand-ins (bind-mounted over the real file).
STANDIN_COMMANDS = ("systemctl", "journalctl")


def run(cmd: list[str], *, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{cmd[0]} is not installed: run the README's setup command") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"'{' '.join(cmd)}' did not finish in {timeout:.0f} s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"'{' '.join(cmd)}' failed: {detail[-1] if detail else proc.returncode}")
    return proc


@dataclass(frozen=True)
class LabNetwork:
    subnet: IPv4Network

    @property
    def gateway(self) -> IPv4Interface:
        """The operator's address on the lab bridge."""
        return IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")

    def address(self, offset: int) -> IPv4Address:
        addr = self.subnet.network_address + offset
        if addr not in self.subnet or addr == self.subnet.broadcast_address:
            raise LabError(f"the lab subnet {self.subnet} is too small for host offset {offset}")
        return addr


def check_subnet_free(subnet: IPv4Network) -> None:
    """Refuse a lab subnet that overlaps a network this machine already routes."""
    for line in run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout.splitlines():
        dest = line.split()[0]
        if dest in ("default", "broadcast", "local", "multicast", "unreachable"):
            dest = line.split()[1] if dest != "default" else "0.0.0.0/0"
        try:
            net = IPv4Network(dest, strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0 or net.is_loopback:
            continue
        if net.overlaps(subnet):
            raise LabError(
                f"the lab subnet {subnet} overlaps {net} already routed on this machine: "
                "pass --subnet with a free private range"
            )


def create_bridge(names: LabNames, network: LabNetwork) -> None:
    run(["ip", "link", "add", names.bridge, "type", "bridge"])
    run(["ip", "addr", "add", str(network.gateway), "dev", names.bridge])
    run(["ip", "link", "set", names.bridge, "up"])


def create_host_network(names: LabNames, host: str, index: int, address: IPv4Address,
                        network: LabNetwork) -> None:
    """A netns with lo and eth0 on the lab bridge, and no default route: nothing leaves the lab."""
    ns = names.netns(host)
    veth = names.veth(index)
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "link", "set", veth, "master", names.bridge, "up"])
    inside = ["ip", "netns", "exec", ns]
    run([*inside, "ip", "link", "set", "lo", "up"])
    run([*inside, "ip", "addr", "add", f"{address}/{network.subnet.prefixlen}", "dev", "eth0"])
    run([*inside, "ip", "link", "set", "eth0", "up"])
    # keepalived's VIP moves between hosts: accept gratuitous ARP so peers learn it at once
    run([*inside, "sysctl", "-q", "-w", "net.ipv4.conf.all.arp_accept=1"])


class HostNamespaces:
    """The persistent mount + UTS namespaces of one host, bound to files in ``ns_dir``."""

    def __init__(self, names: LabNames, ns_dir: Path, host: str):
        self.host = host
        self.mnt = ns_dir / f"{host}.mnt"
        self.uts = ns_dir / f"{host}.uts"
        self.net = Path("/run/netns") / names.netns(host)

    def enter(self, cmd: list[str]) -> list[str]:
        """``cmd`` as it runs on the host: in its network, mount and UTS namespaces."""
        return ["nsenter", f"--net={self.net}", f"--mount={self.mnt}", f"--uts={self.uts}", "--", *cmd]

    def create(self, host_root: Path, binds: list[tuple[Path, str]]) -> None:
        """Create the namespaces: set the hostname and bind ``binds`` (source, target) inside."""
        self.mnt.touch()
        self.uts.touch()
        lines = ["set -e", f"hostname {self.host}", f"umount -l {self.mnt.parent}"]
        for source, target in binds:
            lines.append(f"mount --bind '{source}' '{target}'")
        script = "\n".join(lines)
        run(["unshare", f"--mount={self.mnt}", f"--uts={self.uts}", "--propagation", "private",
             "--", "/bin/sh", "-c", script])


# Mount points the labs created on this machine, shared by every lab: a directory that is a
# mount point in a running lab's namespaces must not be removed (the kernel would detach
# that lab's mount), so they go only when the last lab does.
MOUNT_TARGETS_FILE = Path("/var/lib/kubeha-lab-mount-targets.json")


def create_mount_targets() -> None:
    """Create the missing mount points of the host-private dirs on this machine (left empty)."""
    created = []
    for d in HOST_PRIVATE_DIRS:
        missing = [p for p in [Path(d), *Path(d).parents] if not p.exists()]
        for path in reversed(missing):
            path.mkdir()
            created.append(str(path))
    if created:
        MOUNT_TARGETS_FILE.write_text(json.dumps(_created_mount_targets() + created))


def _created_mount_targets() -> list[str]:
    try:
        return json.loads(MOUNT_TARGETS_FILE.read_text())
    except (OSError, ValueError):
        return []


def remove_mount_targets_if_last_lab() -> None:
    """Remove the mount points the labs created, once no lab is left on this machine."""
    if any(Path("/var/lib").glob("kubeha-lab")) or any(Path("/var/lib").glob("kubeha-lab-*[0-9]")):
        return
    for d in reversed(_created_mount_targets()):
        try:
            Path(d).rmdir()
        except OSError:
            pass  # not empty or already gone: somebody else uses it now
    MOUNT_TARGETS_FILE.unlink(missing_ok=True)


def prepare_ns_dir(ns_dir: Path) -> None:
    """Namespace files can only be bound below a private mount (as `ip netns` does for /run/netns)."""
    ns_dir.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(ns_dir):
        run(["mount", "--bind", str(ns_dir), str(ns_dir)])
    run(["mount", "--make-private", str(ns_dir)])


def _is_mountpoint(path: Path) -> bool:
    return run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def lab_netns(names: LabNames) -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(names.netns_prefix)]


def pids_in_netns(ns: str) -> set[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return {int(p) for p in out.split() if p.isdigit()}


def lab_pids(names: LabNames) -> set[int]:
    pids: set[int] = set()
    for ns in lab_netns(names):
        pids |= pids_in_netns(ns)
    return pids


def lab_veths(names: LabNames) -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    links = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [link for link in links if link.startswith(names.veth_prefix)]


def bridge_exists(names: LabNames) -> bool:
    return run(["ip", "link", "show", names.bridge], check=False).returncode == 0


def lab_mounts(names: LabNames, state_dir: Path) -> list[str]:
    """Mount points in this mount namespace that belong to the lab."""
    out = run(["findmnt", "-rn", "-o", "TARGET"], check=False).stdout
    root = str(state_dir)
    return [m for m in out.splitlines() if m == root or m.startswith(root + "/")
            or m.startswith(f"/run/netns/{names.netns_prefix}")]


def kill_all(pids: set[int], *, timeout: float = 5.0) -> None:
    """SIGKILL the lab's processes and wait until they are gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in pids):
            return
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def remove_network_and_namespaces(names: LabNames, state_dir: Path) -> None:
    """Remove every lab process, mount, namespace and the bridge. Idempotent."""
    for _ in range(5):  # processes may fork while we kill (supervisors restarting services)
        pids = lab_pids(names)
        if not pids:
            break
        kill_all(pids)
    for mount in sorted(lab_mounts(names, state_dir), key=len, reverse=True):
        run(["umount", "-l", mount], check=False)
    for ns in lab_netns(names):
        run(["ip", "netns", "del", ns], check=False)
    # A namespace outlives its name while orphaned TCP sockets in it still retransmit their
    # FIN (minutes); deleting our end of its veth detaches it from the lab at once.
    for veth in lab_veths(names):
        run(["ip", "link", "del", veth], check=False)
    if bridge_exists(names):
        run(["ip", "link", "del", names.bridge], check=False)
