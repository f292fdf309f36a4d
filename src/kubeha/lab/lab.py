"""Build, inspect and remove the lab: a multi-host HA control plane on one Linux machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from pathlib import Path, PurePosixPath
from typing import Callable

import httpx

from kubeha.errors import LabError
from kubeha.hosts.facts import holds_address, parse_ipv4_addresses
from kubeha.inventory import Inventory, SshDefaults, dump_inventory
from kubeha.lb import node_proxy_hosts
from kubeha.lab import namespaces as ns
from kubeha.lab.objects import cluster_objects
from kubeha.lab.standins.systemctl import standalone_argv
from kubeha.lab.topology import (
    LabSpec, LabTopology, etc_hosts, host_files, host_services, lab_topology, light_topology, static_pods,
)
from kubeha.model import Cluster, Host
from kubeha.pki.cluster import ADMIN, ClusterAuthorities, PkiFiles, client_cert
from kubeha.render import render_kubeconfig

READY_TIMEOUT = 120.0
STANDINS = {
    "kube-apiserver": "apiserver",
    "kube-controller-manager": "controller_manager",
    "kube-scheduler": "scheduler",
    "kubelet": "kubelet",
}
LAB_USERS = {"ops": 1500, "nosudo": 1501}  # uids above the machine's usual range
LIGHT_BINARIES = ("ip", "unshare", "nsenter", "/usr/sbin/sshd", "ssh-keygen", "findmnt")
REQUIRED_BINARIES = (*LIGHT_BINARIES, "etcd", "etcdctl", "haproxy", "keepalived", "nginx", "sudo")


@dataclass(frozen=True)
class LabPaths:
    root: Path

    ns_dir = property(lambda self: self.root / "ns")
    bin_dir = property(lambda self: self.root / "bin")
    state_file = property(lambda self: self.root / "lab.json")
    ssh_key = property(lambda self: self.root / "ssh" / "id_ed25519")
    known_hosts = property(lambda self: self.root / "ssh" / "known_hosts")
    admin_kubeconfig = property(lambda self: self.root / "admin.conf")
    inventory = property(lambda self: self.root / "cluster.yaml")
    ca_cert = property(lambda self: self.root / "pki" / "ca.crt")
    admin_cert = property(lambda self: self.root / "pki" / "admin.crt")
    admin_key = property(lambda self: self.root / "pki" / "admin.key")

    def host_root(self, host: str) -> Path:
        return self.root / "hosts" / host

    def on_host(self, host: str, path: PurePosixPath | str) -> Path:
        """Where the file ``path`` of lab host ``host`` lives on this machine."""
        path = str(path)
        if path in ns.HOST_PRIVATE_FILES:
            return self.host_root(host) / path.strip("/").replace("/", "_")
        for private in sorted(ns.HOST_PRIVATE_DIRS, key=len, reverse=True):
            if path == private or path.startswith(private + "/"):
                return self.host_root(host) / path.lstrip("/")
        raise LabError(f"{path} is not private to a lab host; the lab can only install files "
                       f"under {', '.join(ns.HOST_PRIVATE_DIRS)}")


def _write(path: Path, content: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


class Lab:
    """One lab on this machine, kept in ``paths.root``."""

    def __init__(self, names: ns.LabNames | None = None, log: Callable[[str], None] = lambda _: None):
        self.names = names or ns.LabNames.from_env()
        self.paths = LabPaths(self.names.state_dir)
        self.log = log

    # ---- state -------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.paths.root.exists() or bool(ns.lab_netns(self.names))
                or ns.bridge_exists(self.names) or bool(ns.lab_veths(self.names)))

    def topology(self) -> LabTopology:
        try:
            state = json.loads(self.paths.state_file.read_text())
        except FileNotFoundError as e:
            raise LabError("no lab is running: start one with 'kubeha lab up'") from e
        return LabTopology(cluster=Cluster.model_validate(state["cluster"]),
                           spares=tuple(Host.model_validate(h) for h in state["spares"]),
                           subnet=IPv4Network(state["subnet"]))

    def host(self, name: str) -> Host:
        for h in self.topology().hosts:
            if h.name == name:
                return h
        names = ", ".join(h.name for h in self.topology().hosts)
        raise LabError(f"no lab host named {name!r}: the lab has {names}")

    def on(self, host: str, cmd: list[str], *, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on a lab host directly (not over SSH): for building and inspecting the lab."""
        return ns.run(self._namespaces(host).enter(cmd), check=check, timeout=timeout)

    def _namespaces(self, host: str) -> ns.HostNamespaces:
        return ns.HostNamespaces(self.names, self.paths.ns_dir, host)

    # ---- up ----------------------------------------------------------------------------

    def up(self, spec: LabSpec) -> LabTopology:
        if spec.subnet is None:
            spec = replace(spec, subnet=self.names.default_subnet)
        topology = lab_topology(spec)
        started = time.monotonic()
        with self._building(topology, REQUIRED_BINARIES):
            self._build(topology)
            self._start_services(topology.cluster)
            self._wait_ready(topology.cluster, started + READY_TIMEOUT)
            self._create_cluster_objects(topology.cluster)
        self.log(f"lab ready in {time.monotonic() - started:.1f} s")
        return topology

    def up_light(self, hosts: int, *, prefix: str = "host") -> LabTopology:
        """``hosts`` machines named ``<prefix>1..`` that run only sshd (like spares), and no
        cluster: for what needs many SSH hosts and nothing else (bench/fanout.py). Each is a
        lab host as any other (own netns, mount and UTS namespaces, private dirs, the lab's
        systemctl stand-in); ``down`` removes them."""
        topology = light_topology(hosts, self.names.default_subnet, prefix)
        with self._building(topology, LIGHT_BINARIES):
            self._begin(topology)
            self._build_machines(topology, [{} for _ in topology.hosts])
        self.log(f"{hosts} light hosts up")
        return topology

    @contextmanager
    def _building(self, topology: LabTopology, binaries: tuple[str, ...]) -> Iterator[None]:
        """A stale lab removed first; whatever the build made removed if it fails."""
        _require_lab_prerequisites(binaries)
        if self.exists():
            self.log("removing a stale lab first")
            self.down()
        ns.check_subnet_free(topology.subnet)
        try:
            yield
        except BaseException:
            self.log("lab up failed: removing what it built")
            self.down()
            raise

    def _build(self, topology: LabTopology) -> None:
        cluster = topology.cluster
        self._begin(topology)
        auth = ClusterAuthorities.create(cluster.layout)
        self._write_operator_files(topology, auth)
        # Certificates are the slow part of a host: make them in parallel, then build hosts.
        with ThreadPoolExecutor(max_workers=4) as pool:
            files = list(pool.map(lambda h: host_files(cluster, h, auth),
                                  topology.hosts))
        self._build_machines(topology, files)

    def _begin(self, topology: LabTopology) -> None:
        """The state dir with the lab's state file, stand-ins and SSH keys."""
        root = self.paths.root
        root.mkdir(parents=True)
        os.chmod(root, 0o700)
        _write(self.paths.state_file, json.dumps({
            "cluster": topology.cluster.model_dump(mode="json"),
            "spares": [h.model_dump(mode="json") for h in topology.spares],
            "subnet": str(topology.subnet),
        }, indent=2), 0o600)
        self._write_standins()
        self._write_ssh_keys(topology)

    def _build_machines(self, topology: LabTopology, files: list[PkiFiles]) -> None:
        """The bridge, then each host with ``files`` (in ``topology.hosts`` order), sshd running."""
        ns.create_mount_targets()
        ns.prepare_ns_dir(self.paths.ns_dir)
        network = ns.LabNetwork(topology.subnet)
        ns.create_bridge(self.names, network)
        hosts_text = etc_hosts(topology)
        for index, (host, host_file_set) in enumerate(zip(topology.hosts, files)):
            self.log(f"building host {host.name} ({host.address})")
            ns.create_host_network(self.names, host.name, index, host.address, network)
            self._write_host_files(host, host_file_set, hosts_text)
            self._namespaces(host.name).create(self.paths.host_root(host.name), self._binds(host))
            self.on(host.name, ["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_config"])

    def _write_standins(self) -> None:
        python = sys.executable
        for command, module in STANDINS.items():
            _write(self.paths.bin_dir / command,
                   f'#!/bin/sh\nexec {python} -m kubeha.lab.standins.{module} "$@"\n', 0o755)
        systemctl = shlex.join(standalone_argv())
        _write(self.paths.bin_dir / "systemctl", f'#!/bin/sh\nexec {systemctl} "$@"\n', 0o755)
        _write(self.paths.bin_dir / "journalctl", f'#!/bin/sh\nexec {systemctl} journalctl "$@"\n', 0o755)

    def _write_ssh_keys(self, topology: LabTopology) -> None:
        key = self.paths.ssh_key
        key.parent.mkdir(mode=0o700)
        ns.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kubeha-lab", "-f", str(key)])
        known = []
        for host in topology.hosts:
            host_key = self.paths.on_host(host.name, "/etc/ssh/ssh_host_ed25519_key")
            host_key.parent.mkdir(parents=True)
            ns.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key)])
            public = host_key.with_suffix(".pub").read_text().split()
            known.append(f"{host.address},{host.name} {public[0]} {public[1]}")
        _write(self.paths.known_hosts, "\n".join(known) + "\n", 0o644)

    def _write_operator_files(self, topology: LabTopology, auth: ClusterAuthorities) -> None:
        cluster = topology.cluster
        admin = client_cert(auth, ADMIN)
        _write(self.paths.ca_cert, auth.ca.cert_pem)
        _write(self.paths.admin_cert, admin.cert_pem)
        _write(self.paths.admin_key, admin.key_pem, 0o600)
        _write(self.paths.admin_kubeconfig, render_kubeconfig(
            cluster_name=cluster.name, server=cluster.endpoint, ca_pem=auth.ca.cert_pem,
            client_cert_pem=admin.cert_pem, client_key_pem=admin.key_pem, user=ADMIN[0]), 0o600)
        # the spares are listed without roles: the machines an operation may move things to
        with_spares = cluster.model_copy(update={"hosts": topology.hosts})
        inventory = Inventory(cluster=with_spares, ssh=SshDefaults(
            key_file=self.paths.ssh_key, known_hosts=self.paths.known_hosts))
        _write(self.paths.inventory, dump_inventory(inventory), 0o600)

    def _write_host_files(self, host: Host, files: dict, hosts_text: str) -> None:
        name = host.name
        for private in ns.HOST_PRIVATE_DIRS:
            self.paths.on_host(name, private).mkdir(parents=True, exist_ok=True)
        for path in ("/root/.ssh", "/root/.kube", "/var/lib/etcd"):
            os.chmod(self.paths.on_host(name, path), 0o700)
        for d in ("/run/sshd", "/run/lock", "/var/log/nginx"):
            self.paths.on_host(name, d).mkdir(exist_ok=True)
        public_key = self.paths.ssh_key.with_suffix(".pub").read_text()
        _write(self.paths.on_host(name, "/root/.ssh/authorized_keys"), public_key, 0o600)
        self._write_accounts(name, public_key)
        _write(self.paths.on_host(name, "/etc/ssh/sshd_config"), SSHD_CONFIG)
        _write(self.paths.on_host(name, "/etc/hosts"), hosts_text)
        for path in ns.ROOT_SHELL_FILES:
            _write(self.paths.on_host(name, path), "# a lab host's root: not the machine's start-up file\n")
        self.install_files(name, files)

    def install_files(self, host: str, files: PkiFiles) -> None:
        """Write ``files`` ({path: (content, mode)}) on ``host``'s own file system, as the
        lab builds its hosts (for stand-ins of what an operator's script would install)."""
        for path, (content, mode) in files.items():
            _write(self.paths.on_host(host, path), content, mode)

    def _write_accounts(self, host: str, public_key: str) -> None:
        """The machine's accounts plus the lab's operators: `ops` may sudo without a
        password, `nosudo` may log in but not sudo (to test kubeha as a non-root user)."""
        files = {f: Path(f).read_text() for f in ("/etc/passwd", "/etc/group", "/etc/shadow")}
        for user, uid in LAB_USERS.items():
            files["/etc/passwd"] += f"{user}:x:{uid}:{uid}:kubeha lab:/home/{user}:/bin/sh\n"
            files["/etc/group"] += f"{user}:x:{uid}:\n"
            files["/etc/shadow"] += f"{user}:*:20000:0:99999:7:::\n"
            ssh_dir = self.paths.on_host(host, f"/home/{user}/.ssh")
            ssh_dir.mkdir(parents=True, mode=0o700)
            _write(ssh_dir / "authorized_keys", public_key, 0o600)
            for path in (ssh_dir.parent, ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(path, uid, uid)
        for path, text in files.items():
            _write(self.paths.on_host(host, path), text, 0o640 if path == "/etc/shadow" else 0o644)
        _write(self.paths.on_host(host, "/etc/sudoers.d/kubeha-lab"),
               "# kubeha lab: the operator account\nops ALL=(ALL) NOPASSWD: ALL\n", 0o440)

    def _binds(self, host: Host) -> list[tuple[Path, str]]:
        binds = [(self.paths.on_host(host.name, d), d) for d in ns.HOST_PRIVATE_DIRS
                 if d != "/usr/local/bin"]
        binds += [(self.paths.on_host(host.name, f), f) for f in ns.HOST_PRIVATE_FILES]
        binds.append((self.paths.bin_dir, "/usr/local/bin"))
        binds += [(self.paths.bin_dir / c, f"/usr/bin/{c}") for c in ns.STANDIN_COMMANDS
                  if Path(f"/usr/bin/{c}").exists()]
        return binds

    def _validate_configs(self, cluster: Cluster) -> None:
        """Every rendered HA config passes its own binary's check before anything starts."""
        paths = cluster.paths
        for host in cluster.hosts:
            checks = []
            if host in cluster.lb_hosts and cluster.vip is not None:
                checks += [["haproxy", "-c", "-q", "-f", str(paths.haproxy_cfg)],
                           ["keepalived", "-t", "-f", str(paths.keepalived_conf)]]
            if host in node_proxy_hosts(cluster):
                checks.append(["nginx", "-t", "-q", "-c", str(paths.node_proxy_conf)])
            for check in checks:
                result = self.on(host.name, check, check=False)
                if result.returncode != 0:
                    raise LabError(f"{check[0]} rejected the config kubeha rendered for {host.name}: "
                                   f"{(result.stderr or result.stdout).strip()[:300]}")

    def _start_services(self, cluster: Cluster) -> None:
        self._validate_configs(cluster)
        for host in cluster.hosts:
            units = host_services(cluster, host)
            self.log(f"starting {', '.join(units)} on {host.name}")
            self.on(host.name, ["systemctl", "start", "--no-block", *units])
        # Highest priority first; wait for it to hold the VIP before starting the others
        # (runbook 004: starting all at once makes them fight over the VIP).
        lbs = cluster.lb_hosts if cluster.vip else ()
        for i, host in enumerate(lbs):
            self.on(host.name, ["systemctl", "start", "--no-block", "keepalived"])
            if i == 0:
                self._wait(lambda: self.vip_holders(cluster) == [host.name], time.monotonic() + 30,
                           f"keepalived on {host.name} to take the VIP")

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (httpx.HTTPError, LabError, OSError):
                pass
            time.sleep(0.2)
        raise LabError(f"timed out waiting for {what}: see 'kubeha lab status' and the logs "
                       f"under {self.paths.root}/hosts/<host>/var/log")

    def api(self, cluster: Cluster, server: str | None = None) -> httpx.Client:
        """An admin client of the lab's API, through the VIP unless ``server`` is given."""
        tls = ssl.create_default_context(cafile=str(self.paths.ca_cert))
        tls.load_cert_chain(str(self.paths.admin_cert), str(self.paths.admin_key))
        return httpx.Client(base_url=server or cluster.endpoint, verify=tls, timeout=2)

    def _wait_ready(self, cluster: Cluster, deadline: float) -> None:
        with self.api(cluster) as api:
            self._wait(lambda: api.get("/readyz").status_code == 200, deadline,
                       "the API to answer through the VIP")
            nodes = {h.name for h in cluster.hosts}
            self._wait(lambda: ready_nodes(api) >= nodes, deadline, f"nodes {sorted(nodes)} to be Ready")

    def _create_cluster_objects(self, cluster: Cluster) -> None:
        """Objects a real cluster has and operations must keep right: kubeadm's ConfigMaps, workloads."""
        with self.api(cluster) as api:
            for path, body in cluster_objects(cluster, self.paths.ca_cert.read_bytes()):
                r = api.post(path, json=body)
                if r.status_code not in (200, 201, 409):
                    raise LabError(f"creating {body['kind']} {body['metadata']['name']} failed: "
                                   f"{r.status_code} {r.text[:200]}")

    # ---- inspect -----------------------------------------------------------------------

    def vip_holders(self, cluster: Cluster) -> list[str]:
        if cluster.vip is None:
            return []
        vip = cluster.vip
        holders = []
        for host in cluster.lb_hosts:
            out = ns.run(["ip", "-n", self.names.netns(host.name), "-4", "-o", "addr", "show", "dev",
                          vip.interface], check=False).stdout
            if holds_address(parse_ipv4_addresses(out), vip.address):
                holders.append(host.name)
        return holders

    def status(self) -> dict:
        topology = self.topology()
        cluster = topology.cluster
        hosts = []
        for host in topology.hosts:
            keepalived = host in cluster.lb_hosts and cluster.vip is not None
            units = host_services(cluster, host) + (("keepalived",) if keepalived else ())
            states = {}
            if units:
                out = self.on(host.name, ["systemctl", "is-active", *units], check=False).stdout.split()
                states = dict(zip(units, out))
            hosts.append({
                "name": host.name, "address": str(host.address),
                "roles": sorted(r.value for r in host.roles) or ["spare"],
                "sshd": self._sshd_alive(host.name), "services": states,
                "static_pods": list(static_pods(cluster, host)),
            })
        nodes: dict[str, bool] = {}
        try:
            if cluster.masters:  # a light lab (`up_light`) has no cluster
                with self.api(cluster) as api:
                    nodes = node_readiness(api)
        except httpx.HTTPError:
            pass
        return {
            "layout": cluster.layout.value, "state_dir": str(self.paths.root),
            "endpoint": cluster.endpoint if cluster.masters else None, "vip_holders": self.vip_holders(cluster),
            "hosts": hosts, "nodes": nodes, "memory_mib": round(self.memory_bytes() / 2**20),
            "processes": len(ns.lab_pids(self.names)), "admin_kubeconfig": str(self.paths.admin_kubeconfig),
        }

    def _sshd_alive(self, host: str) -> bool:
        pid_file = self.paths.on_host(host, "/run/sshd.pid")
        try:
            return Path(f"/proc/{int(pid_file.read_text())}").exists()
        except (OSError, ValueError):
            return False

    def memory_bytes(self) -> int:
        """Proportional set size of every lab process (shared pages counted once in all)."""
        total = 0
        for pid in ns.lab_pids(self.names):
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def ssh_command(self, host: str, command: list[str]) -> list[str]:
        h = self.host(host)
        return ["ssh", "-i", str(self.paths.ssh_key), "-o", f"UserKnownHostsFile={self.paths.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", f"root@{h.address}", *command]

    # ---- down --------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Whatever of this lab still exists on this machine."""
        names, root = self.names, self.paths.root
        left = [f"netns {n}" for n in ns.lab_netns(names)]
        left += [f"bridge {names.bridge}"] if ns.bridge_exists(names) else []
        left += [f"link {v}" for v in ns.lab_veths(names)]
        left += [f"mount {m}" for m in ns.lab_mounts(names, root)]
        left += [f"process {p}" for p in ns.lab_pids(names)]
        left += [f"directory {root}"] if root.exists() else []
        return left

    def down(self) -> None:
        ns.remove_network_and_namespaces(self.names, self.paths.root)
        if self.paths.root.exists():
            shutil.rmtree(self.paths.root)
        ns.remove_mount_targets_if_last_lab()
        left = self.leftovers()
        if left:
            raise LabError(f"lab down left {', '.join(left)} behind: remove them by hand")


def node_readiness(api: httpx.Client) -> dict[str, bool]:
    r = api.get("/api/v1/nodes")
    r.raise_for_status()
    result = {}
    for node in r.json()["items"]:
        conditions = node.get("status", {}).get("conditions", [])
        result[node["metadata"]["name"]] = any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return result


def ready_nodes(api: httpx.Client) -> set[str]:
    return {name for name, ready in node_readiness(api).items() if ready}


def _require_lab_prerequisites(binaries: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts): run it with sudo or as root")
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: run the README's setup command "
                       "(scripts/setup.sh) to install the Debian packages")
    if not Path(f"/proc/self/task/{os.getpid()}/children").exists():
        raise LabError("this kernel has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN), which the "
                       "lab's systemctl reads to find a unit's processes: run the lab on a kernel built with it")


SSHD_CONFIG = """\
# kubeha lab host sshd: root with the lab key only
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
MaxStartups 200:30:400
MaxSessions 100
AllowTcpForwarding yes
Subsystem sftp internal-sftp
"""
