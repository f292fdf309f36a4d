"""Benchmark: fan-out. Repoint the kubelet of N hosts at a new server and restart it, kubeha
next to ansible-core doing the same steps (pipelining on, forks = N), side by side in one
run; wall time, CPU and peak memory of each controller.

Target (issue 7, item 3): at least 5x faster than ansible-core at N = 200, and wall time
growing less than linearly in N.

    sudo .venv/bin/python bench/fanout.py [--hosts 10,50,200] [--runs 3]

Hosts: max(N) light lab hosts (`Lab.up_light`, lab id 9 unless --lab-id: netns kh9-host<i>,
bridge khbr9, 10.212.9.0/24), sshd only, each with /etc/kubernetes/kubelet.conf (0600,
naming https://127.0.0.1:6443), a kubelet.service running `sleep infinity` under the lab's
systemctl stand-in; a run with N hosts uses host1..hostN. Before
each run every host is put back: the old kubelet.conf, no backups. The lab, the cgroups and
every process are removed at the end, also on an error, Ctrl-C, SIGTERM or SIGHUP.

Per host, both tools: back up kubelet.conf (mode kept) and write it atomically naming the new
server, restart the kubelet, check that it runs and that the file names the new server.
- kubeha: what `repoint-nodes` runs per node, through the product's hosts layer
  (ClusterAccess: one asyncssh connection per host; `write_kubeconfigs`, its restart command,
  `read_nodes_files` as its is-done check), minus the Lease/Ready wait through the API (no
  apiserver here); run as `python bench/fanout.py --kubeha-side SPEC`;
- ansible-core 2.19 (installed on first use into /var/tmp/kubeha-fanout-ansible):
  `replace` (or `copy` with per-host content, --ansible-write copy) with backup: true and
  mode 0600, `systemd_service` state: restarted, a `shell` check; pipelining, forks = N, no
  fact gathering, the interpreter given (no discovery), OpenSSH with its default ControlMaster
  settings.
Both verify host keys against the lab's known_hosts and log in as root with the lab's key.

Measured per run, each controller a child process in a cgroup of its own: wall time (start
to exit), CPU user+sys (the cgroup's: the process, its children and detached descendants
such as ssh ControlMaster processes; also wait4's, which misses the detached ones), max RSS
(wait4: the largest single process) and the cgroup's peak memory (every process of the
controller together, page cache it brought in included), and the CPU the hosts used (their
sshd sessions, the commands and the systemctl stand-ins they ran). After each run the bench
checks every host itself: the file names the new server with mode 0600, a backup holds the
old file, a new kubelet process runs.

Writes bench/results/fanout.json and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provenance import provenance

RESULTS = Path(__file__).parent / "results" / "fanout.json"
LAB_ID = "9"
ANSIBLE_VENV = Path("/var/tmp/kubeha-fanout-ansible")
ANSIBLE_REQUIREMENT = "ansible-core>=2.19,<2.20"
ANSIBLE_PLAYBOOK = ANSIBLE_VENV / "bin" / "ansible-playbook"
OLD_SERVER = "https://127.0.0.1:6443"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBELET_MODE = 0o600
KUBEHA_BACKUPS = "/var/lib/kubeha/backups"
ANSIBLE_REMOTE_TMP = "/run/ansible-tmp"  # /run is private to each lab host
KUBELET_UNIT = """\
[Unit]
Description=kubelet (bench/fanout.py: sleeps, nothing more)

[Service]
ExecStart=/bin/sleep infinity
Restart=always

[Install]
WantedBy=multi-user.target
"""
CA_DATA = "LS0tLS1CRUdJTi" + "A" * 1400 + "=="  # the size of a real CA's base64, never parsed


def kubeconfig(host: str, server: str) -> str:
    """A kubeadm kubelet.conf (client cert rotated to a file) for ``host``."""
    return f"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {CA_DATA}
    server: {server}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:{host}
  name: system:node:{host}@kubernetes
current-context: system:node:{host}@kubernetes
kind: Config
preferences: {{}}
users:
- name: system:node:{host}
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
"""


# ---- kubeha's side: a process of its own, measured like ansible-playbook -------------------------


def kubeha_side(spec_path: str) -> int:
    """Repoint and restart the kubelets of the spec's hosts with the product's code; print what
    failed and each phase's seconds as JSON."""
    started = time.monotonic()
    from kubeha.access import ClusterAccess
    from kubeha.hosts import BackupSet
    from kubeha.inventory import Inventory, SshDefaults
    from kubeha.model import Cluster, Host, Role
    # _RESTART: the exact command repoint-nodes restarts a node's kubelet with
    from kubeha.operations.nodes import _RESTART, read_nodes_files, write_kubeconfigs

    spec = json.loads(Path(spec_path).read_text())
    server = spec["server"]
    hosts = tuple(Host(name=name, address=address, roles=frozenset({Role.WORKER})) for name, address in spec["hosts"])
    inventory = Inventory(cluster=Cluster(name="fanout", hosts=hosts),
                          ssh=SshDefaults(key_file=Path(spec["key"]), known_hosts=Path(spec["known_hosts"])))
    phases = {"import": time.monotonic() - started}

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        phases[name] = round(now - since, 3)
        return now

    at = time.monotonic()
    with ClusterAccess(inventory) as access:
        failed = {name: f"connecting failed: {e}" for name, e in access.connect_errors.items()}
        at = phase("connect", at)
        failed |= write_kubeconfigs(access, [h for h in hosts if h.name not in failed], server,
                                    BackupSet(spec["operation_id"]))
        at = phase("write", at)
        restarted = access.run_all(["sh", "-c", _RESTART], hosts=[h for h in hosts if h.name not in failed])
        failed |= {name: f"restarting failed: {o.error}" for name, o in restarted.items() if o.error is not None}
        at = phase("restart", at)
        files, unread = read_nodes_files(access, [h for h in hosts if h.name not in failed])
        failed |= {name: f"checking failed: {why}" for name, why in unread.items()}
        failed |= {name: "the kubelet runs on an older kubeconfig, or the file does not name the server"
                   for name, f in files.items() if not (f.names(server) and f.kubelet_current)}
        at = phase("verify", at)
    phase("close", at)
    phases["import"] = round(phases["import"], 3)
    print(json.dumps({"failed": failed, "phases": phases}))
    return 1 if failed else 0


# ---- measuring a controller -------------------------------------------------------------------------


CGROUP_PREFIX = "kubeha-bench-fanout-"


class Cgroup:
    """A cgroup of our own for CPU and memory accounting: v2 (unified) or v1 (cpuacct, memory)."""

    def __init__(self, name: str, *, create: bool = True) -> None:
        self.v2 = (Path("/sys/fs/cgroup") / "cgroup.controllers").exists()
        roots = [Path("/sys/fs/cgroup")] if self.v2 else [Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup/memory")]
        self.dirs = [root / f"{CGROUP_PREFIX}{name}" for root in roots]
        for d in self.dirs if create else ():
            d.mkdir()

    @classmethod
    def remove_stale(cls) -> None:
        """The cgroups (and what runs in them) of an earlier run of this bench that was killed."""
        probe = cls("", create=False)
        for d in probe.dirs:
            for stale in d.parent.glob(f"{CGROUP_PREFIX}*"):
                cls(stale.name.removeprefix(CGROUP_PREFIX), create=False).remove()

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        return {int(p) for d in self.dirs if d.exists() for p in (d / "cgroup.procs").read_text().split()}

    def cpu_seconds(self) -> float:
        if self.v2:
            usage = next(line for line in (self.dirs[0] / "cpu.stat").read_text().splitlines()
                         if line.startswith("usage_usec"))
            return int(usage.split()[1]) / 1e6
        return int((self.dirs[0] / "cpuacct.usage").read_text()) / 1e9

    def peak_memory_bytes(self) -> int | None:
        path = self.dirs[0] / "memory.peak" if self.v2 else self.dirs[1] / "memory.max_usage_in_bytes"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Kill whatever is left in it (ours: the controller's detached processes), then remove it."""
        self.kill()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)

    def kill(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)


def measure(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> dict:
    """Run ``cmd`` in a cgroup of its own; its wall time, CPU, memory and exit status."""
    cgroup = Cgroup(f"{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(log, "wb") as out:
            started = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=lambda: cgroup.add(os.getpid()))
            deadline, timed_out = started + timeout, False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline and not timed_out:
                    print(f"'{shlex.join(cmd)}' did not finish in {timeout:.0f} s: killed", flush=True)
                    cgroup.kill()
                    timed_out = True
                time.sleep(0.005)
            wall = time.monotonic() - started
            proc.returncode = None if timed_out else os.waitstatus_to_exitcode(status)
        cpu = cgroup.cpu_seconds()
        peak = cgroup.peak_memory_bytes()
        return {"exit_status": proc.returncode, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "cpu_wait4_s": round(usage.ru_utime + usage.ru_stime, 3),
                "user_wait4_s": round(usage.ru_utime, 3), "sys_wait4_s": round(usage.ru_stime, 3),
                "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
                "peak_memory_mib": None if peak is None else round(peak / 2**20, 1)}
    finally:
        cgroup.remove()


# ---- the hosts --------------------------------------------------------------------------------------


class Hosts:
    """The light lab hosts and their kubelets: set up, put back before each run, checked after."""

    def __init__(self, lab, topology, cgroup: Cgroup) -> None:
        self.lab = lab
        self.hosts = topology.hosts
        self.cgroup = cgroup  # every process of the hosts: their CPU

    def file(self, host: str, path: str) -> Path:
        return self.lab.paths.on_host(host, path)

    def install(self) -> None:
        from kubeha.lab import namespaces as ns

        for host in self.hosts:
            write_file(self.file(host.name, "/etc/systemd/system/kubelet.service"), KUBELET_UNIT, 0o644)
            write_file(self.file(host.name, KUBELET_CONF), kubeconfig(host.name, OLD_SERVER), KUBELET_MODE)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda h: self.lab.on(h.name, ["systemctl", "start", "kubelet"]), self.hosts))
        for host in self.hosts:  # sshd and the kubelets; what they start later stays in it
            for pid in ns.pids_in_netns(self.lab.names.netns(host.name)):
                self.cgroup.add(pid)

    def reset(self, n: int) -> dict[str, int]:
        """host1..hostN back as they were: the old kubelet.conf, no backups; their kubelets' pids."""
        pids = {}
        for host in self.hosts[:n]:
            write_file(self.file(host.name, KUBELET_CONF), kubeconfig(host.name, OLD_SERVER), KUBELET_MODE)
            for backup in self.file(host.name, KUBELET_CONF).parent.glob("kubelet.conf.*~"):
                backup.unlink()
            shutil.rmtree(self.file(host.name, KUBEHA_BACKUPS), ignore_errors=True)
            self.file(host.name, ANSIBLE_REMOTE_TMP).mkdir(mode=0o700, exist_ok=True)  # as after an earlier run
            pids[host.name] = self.kubelet_pid(host.name)
        return pids

    def kubelet_pid(self, host: str) -> int | None:
        """The pid of the running kubelet, from the systemctl stand-in's state."""
        try:
            state = marshal.loads(self.file(host, "/run/kubeha-systemd/kubelet.service.state").read_bytes())
        except (OSError, ValueError, EOFError):
            return None
        pid = state.get("main_pid")
        return pid if state.get("state") == "active" and pid and Path(f"/proc/{pid}").exists() else None

    def check(self, n: int, server: str, before: dict[str, int]) -> dict[str, str]:
        """What is wrong on host1..hostN after a run, by host."""
        from kubeha.render.kubeconfig import kubeconfig_servers

        wrong = {}
        for host in self.hosts[:n]:
            conf = self.file(host.name, KUBELET_CONF)
            backups = [*conf.parent.glob("kubelet.conf.*~"), *self.file(host.name, KUBEHA_BACKUPS).glob("*/*-kubelet.conf")]
            pid = self.kubelet_pid(host.name)
            if kubeconfig_servers(conf.read_text()) != [server]:
                wrong[host.name] = f"kubelet.conf names {kubeconfig_servers(conf.read_text())}"
            elif conf.stat().st_mode & 0o7777 != KUBELET_MODE:
                wrong[host.name] = f"kubelet.conf has mode {conf.stat().st_mode & 0o7777:o}"
            elif not any(kubeconfig_servers(b.read_text()) == [OLD_SERVER] for b in backups):
                wrong[host.name] = "no backup of the old kubelet.conf"
            elif pid is None or pid == before.get(host.name):
                wrong[host.name] = "no new kubelet process runs"
        return wrong


def write_file(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(path, mode)


# ---- the two tools ----------------------------------------------------------------------------------


def ensure_ansible() -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        print(f"installing {ANSIBLE_REQUIREMENT} into {ANSIBLE_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", ANSIBLE_REQUIREMENT], check=True)


def ansible_files(work: Path, hosts, n: int, server: str, lab_paths, write: str) -> tuple[list[str], dict[str, str]]:
    """ansible.cfg, an inventory and a playbook for host1..hostN; the command line and environment."""
    ssh_args = ("-C -o ControlMaster=auto -o ControlPersist=60s "  # ansible's default ssh_args
                f"-o UserKnownHostsFile={lab_paths.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
    (work / "ansible.cfg").write_text(f"""[defaults]
forks = {n}
host_key_checking = True
gathering = explicit
interpreter_python = /usr/bin/python3
remote_user = root
private_key_file = {lab_paths.ssh_key}
remote_tmp = {ANSIBLE_REMOTE_TMP}
local_tmp = {work}/local
retry_files_enabled = False

[ssh_connection]
pipelining = True
ssh_args = {ssh_args}
control_path_dir = {work}/cp
""")
    inventory = {"all": {"hosts": {h.name: {"ansible_host": str(h.address),
                                            **({"kubeconfig": kubeconfig(h.name, server)} if write == "copy" else {})}
                                   for h in hosts[:n]},
                         "vars": {"new_server": server}}}
    (work / "inventory.json").write_text(json.dumps(inventory, indent=1))
    if write == "copy":
        write_task = f"""    - name: kubelet.conf names the new server (per-host content, backed up)
      ansible.builtin.copy:
        content: "{{{{ kubeconfig }}}}"
        dest: {KUBELET_CONF}
        backup: true
        mode: "0600"
"""
    else:
        write_task = f"""    - name: kubelet.conf names the new server (only server changes, backed up)
      ansible.builtin.replace:
        path: {KUBELET_CONF}
        regexp: '^(\\s*server:\\s*).*$'
        replace: '\\g<1>{{{{ new_server }}}}'
        backup: true
        mode: "0600"
"""
    (work / "playbook.yml").write_text(f"""- hosts: all
  gather_facts: false
  tasks:
{write_task}    - name: restart kubelet
      ansible.builtin.systemd_service:
        name: kubelet
        state: restarted
    - name: kubelet active and kubelet.conf names the new server
      ansible.builtin.shell: "systemctl is-active kubelet && grep -qxF '    server: {{{{ new_server }}}}' {KUBELET_CONF}"
      changed_when: false
""")
    env = {**os.environ, "ANSIBLE_CONFIG": str(work / "ansible.cfg"), "ANSIBLE_HOME": str(work / "home"),
           "ANSIBLE_NOCOLOR": "1"}
    return [str(ANSIBLE_PLAYBOOK), "-i", str(work / "inventory.json"), str(work / "playbook.yml")], env


def ansible_failures(log: Path) -> dict[str, str]:
    """Hosts whose PLAY RECAP line counts an unreachable or failed task."""
    failed = {}
    for line in log.read_text(errors="replace").splitlines():
        if " : ok=" in line:
            host, counts = line.split(" : ", 1)
            values = dict(part.split("=") for part in counts.split())
            if values.get("unreachable") != "0" or values.get("failed") != "0":
                failed[host.strip()] = counts.strip()
    return failed


def run_tool(tool: str, hosts: Hosts, n: int, server: str, args, number: int, work: Path) -> dict:
    before = hosts.reset(n)
    run_dir = work / f"{number:03d}-{tool}-{n}"
    run_dir.mkdir()
    if tool == "kubeha":
        spec = run_dir / "spec.json"
        spec.write_text(json.dumps({
            "hosts": [[h.name, str(h.address)] for h in hosts.hosts[:n]], "server": server,
            "key": str(hosts.lab.paths.ssh_key), "known_hosts": str(hosts.lab.paths.known_hosts),
            "operation_id": f"fanout-{number}"}))
        cmd, env = [sys.executable, __file__, "--kubeha-side", str(spec)], dict(os.environ)
    else:
        cmd, env = ansible_files(run_dir, hosts.hosts, n, server, hosts.lab.paths, args.ansible_write)
    hosts_cpu, load = hosts.cgroup.cpu_seconds(), os.getloadavg()[0]
    result = measure(cmd, env, run_dir / "output.log", args.timeout)
    result["hosts_cpu_s"] = round(hosts.cgroup.cpu_seconds() - hosts_cpu, 3)
    result["load_before"] = round(load, 2)  # the machine's 1-minute load average: other work on it
    output = (run_dir / "output.log").read_text(errors="replace")
    if tool == "kubeha":
        try:
            said = json.loads(output.strip().splitlines()[-1])
        except (IndexError, ValueError):
            said = {}
        result["phases"] = said.get("phases")
        said_failed = said.get("failed", {"?": output[-300:]})
    else:
        said_failed = ansible_failures(run_dir / "output.log")
        if result["exit_status"] != 0 and not said_failed:
            said_failed = {"?": output[-300:]}
    wrong = hosts.check(n, server, before)
    bad = set(wrong) | set(said_failed)
    result.update(tool=tool, n=n, hosts_ok=0 if "?" in bad else n - len(bad),  # "?": the tool said nothing usable
                  failed=dict(list({**said_failed, **wrong}.items())[:5]))
    return result


# ---- the run ----------------------------------------------------------------------------------------


def _median(values) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarise(runs: list[dict], sizes: list[int]) -> tuple[dict, dict]:
    keys = ("wall_s", "cpu_s", "cpu_wait4_s", "max_rss_mib", "peak_memory_mib", "hosts_cpu_s", "load_before")
    medians: dict[str, dict] = {}
    for tool in ("kubeha", "ansible"):
        for n in sizes:
            mine = [r for r in runs if r["tool"] == tool and r["n"] == n]
            medians[f"{tool} {n}"] = {**{k: _median(r.get(k) for r in mine) for k in keys},
                                      "runs": len(mine), "runs_all_hosts_ok": sum(r["hosts_ok"] == n for r in mine)}
            if tool == "kubeha":
                medians[f"{tool} {n}"]["phases"] = {
                    phase: _median((r.get("phases") or {}).get(phase) for r in mine)
                    for phase in ("import", "connect", "write", "restart", "verify", "close")}
    ratios: dict[str, dict] = {}
    for n in sizes:
        k, a = medians[f"kubeha {n}"], medians[f"ansible {n}"]
        ratios[str(n)] = {key: round(a[key] / k[key], 1) if a[key] and k[key] else None
                          for key in ("wall_s", "cpu_s", "max_rss_mib", "peak_memory_mib", "hosts_cpu_s")}
    smallest = min(sizes)

    def growth(tool: str, n: int) -> float | None:
        walls = medians[f"{tool} {n}"]["wall_s"], medians[f"{tool} {smallest}"]["wall_s"]
        return round(walls[0] / walls[1], 2) if None not in walls else None

    ratios["wall_growth"] = {tool: {str(n): {"wall": growth(tool, n), "hosts": round(n / smallest, 2)} for n in sizes}
                             for tool in ("kubeha", "ansible")}
    return medians, ratios


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(record: dict) -> str:
    m, r, sizes = record["medians"], record["ratios"], record["sizes"]
    rows = ["| N | tool | wall (s) | CPU user+sys (s) | max RSS (MiB) | peak memory, all its processes (MiB) "
            "| hosts' CPU (s) | runs with every host OK |", "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        for tool in ("kubeha", "ansible"):
            s = m[f"{tool} {n}"]
            rows.append(f"| {n} | {'ansible-core' if tool == 'ansible' else tool} | {_fmt(s['wall_s'])} | {_fmt(s['cpu_s'])} "
                        f"| {_fmt(s['max_rss_mib'], 0)} | {_fmt(s['peak_memory_mib'], 0)} | {_fmt(s['hosts_cpu_s'])} "
                        f"| {s['runs_all_hosts_ok']}/{s['runs']} |")
    rows += ["", f"| N | ansible-core / kubeha: wall | CPU | peak memory | hosts' CPU | kubeha's wall / its wall at N={min(sizes)} "
             f"| ansible-core's | N / {min(sizes)} |", "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        x, g = r[str(n)], r["wall_growth"]
        rows.append(f"| {n} | {x['wall_s']}x | {x['cpu_s']}x | {x['peak_memory_mib']}x | {x['hosts_cpu_s']}x "
                    f"| {g['kubeha'][str(n)]['wall']} | {g['ansible'][str(n)]['wall']} | {g['kubeha'][str(n)]['hosts']} |")
    rows += ["", "kubeha's phases (median s): " + "; ".join(
        f"N={n}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in m[f"kubeha {n}"]["phases"].items() if k != "close")
        for n in sizes) + ".",
        "Machine load (1-minute average) before the runs, median: " + ", ".join(
            f"N={n} {_fmt(m[f'kubeha {n}']['load_before'])} / {_fmt(m[f'ansible {n}']['load_before'])}" for n in sizes)
        + " (kubeha's runs / ansible-core's)."]
    return "\n".join(rows)


def versions() -> dict[str, str]:
    import asyncssh

    ansible = subprocess.run([str(ANSIBLE_PLAYBOOK), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {"ansible": ansible, "asyncssh": asyncssh.__version__, "openssh": openssh, "python": platform.python_version()}


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: the lab and cgroups go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="10,50,200", help="the values of N, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs of each tool at each N (medians are reported)")
    parser.add_argument("--ansible-write", choices=("replace", "copy"), default="replace",
                        help="the ansible module that writes kubelet.conf")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds one run may take")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unrecorded first run of each tool")
    parser.add_argument("--lab-id", default=LAB_ID, help="the lab's id (KUBEHA_LAB_ID): its netns, bridge, subnet")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the generated inventories, playbooks and each run's output (a temporary directory)")
    args = parser.parse_args()
    sizes = sorted({int(n) for n in args.hosts.split(",")})
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    os.environ["KUBEHA_LAB_ID"] = args.lab_id
    from kubeha.lab import Lab

    ensure_ansible()
    lab = Lab(log=lambda line: print(line, flush=True) if "building host" not in line else None)
    work = Path(tempfile.mkdtemp(prefix="kubeha-fanout-"))
    Cgroup.remove_stale()
    hosts_cgroup = Cgroup(f"hosts-{os.getpid()}")
    runs: list[dict] = []
    try:
        started = time.monotonic()
        topology = lab.up_light(max(sizes))
        hosts = Hosts(lab, topology, hosts_cgroup)
        hosts.install()
        print(f"{len(topology.hosts)} hosts ready in {time.monotonic() - started:.1f} s", flush=True)
        server = f"https://{topology.subnet.network_address + 250}:8443"
        number = 0
        if not args.no_warmup:
            for tool in ("kubeha", "ansible"):
                number += 1
                warm = run_tool(tool, hosts, sizes[0], server, args, number, work)
                print(f"warm-up {tool} N={sizes[0]}: {warm['wall_s']} s (not recorded)", flush=True)
        for repeat in range(args.runs):
            for n in sizes:
                for tool in (("kubeha", "ansible") if repeat % 2 == 0 else ("ansible", "kubeha")):
                    number += 1
                    result = run_tool(tool, hosts, n, server, args, number, work)
                    result["repeat"] = repeat + 1
                    runs.append(result)
                    print(json.dumps(result), flush=True)
                    time.sleep(1)  # the hosts' restarted kubelets settle
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # clean up in peace
        try:
            lab.down()
        finally:
            hosts_cgroup.remove()
            if args.keep_work:
                print(f"each run's files and output: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    medians, ratios = summarise(runs, sizes)
    record = {
        "benchmark": "fanout", **provenance(),
        "command": f"bench/fanout.py --hosts {','.join(map(str, sizes))} --runs {args.runs}"
                   + (f" --ansible-write {args.ansible_write}" if args.ansible_write != "replace" else ""),
        "versions": versions(), "ansible_write": args.ansible_write,
        "sizes": sizes, "runs": runs, "medians": medians, "ratios": ratios,
    }
    record["markdown"] = markdown(record)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    print(record["markdown"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--kubeha-side":
        sys.exit(kubeha_side(sys.argv[2]))
    main()
