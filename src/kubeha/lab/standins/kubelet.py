"""kubelet stand-in: registers its Node, renews its node Lease, runs static pods as processes.

What it does, as the real kubelet does it:

- reads its kubeconfig once, at start (a changed kubeconfig takes a restart);
- registers the Node (or, if it exists, posts its status), Ready=True, and re-posts the
  status every ``nodeStatusUpdateFrequency`` when Ready is not True (say the
  controller-manager marked it Unknown) or ``nodeStatusReportFrequency`` has passed;
- renews the Lease ``kube-node-lease/<node>`` every quarter of ``nodeLeaseDurationSeconds``,
  retrying a failed renewal after 200 ms doubling up to 7 s;
- runs the static pods of ``staticPodPath``: each container's command + args as a process
  (no images: there is no container runtime), restarted when it exits, replaced when its
  manifest changes, stopped when its manifest goes; their mirror pods are kept in the API;
- marks the API pods bound to the node Running and Ready (nothing runs for them).

Container processes outlive the kubelet as containers outlive a kubelet under containerd:
each runs in a session of its own, its output piped through a small ``mawk`` log shim
(containerd-shim's job) into ``/var/log/pods/<namespace>_<pod>/<container>.log``, and its
pid is recorded under ``<root-dir>/lab-pods/<pod>/``. A restarted kubelet adopts the live
processes whose manifest did not change and stops the others. SIGTERM stops the kubelet
only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from kubeha.lab.standins.systemctl import lab_nice
from kubeha.lab.standins.common import (
    FlagValue,
    kube_time,
    micro_time,
    parse_duration,
    start_standin,
)
from kubeha.lab.standins.kubeclient import ApiError, KubeClient, Object, condition, connect

KUBELET_VERSION = "v1.30.0"
POD_LOG_DIR = Path("/var/log/pods")
NODE_LEASE_NAMESPACE = "kube-node-lease"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
# A container image's usual PATH: static pods get neither the kubelet's environment nor its PATH.
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# mawk reads a pipe line by line only with -W interactive; TZ=UTC gives UTC timestamps
LOG_SHIM = ["mawk", "-W", "interactive", '{ print strftime("%Y-%m-%dT%H:%M:%SZ"), $0; fflush() }']
STOP_GRACE_SECONDS = 10.0
MAX_RESTART_DELAY = 10.0
MAX_RETRY_DELAY = 7.0  # the real kubelet's backoff cap for lease and registration retries
FIRST_RETRY_DELAY = 0.2
MANIFEST_POLL_SECONDS = 1.0
POD_SYNC_SECONDS = 10.0

FLAGS: dict[str, FlagValue] = {
    "kubeconfig": "",
    "config": "",
    "pod-manifest-path": "",
    "hostname-override": "",
    "node-ip": "",
    "node-labels": "",
    "register-with-taints": "",
    "root-dir": "/var/lib/kubelet",
    # accepted without effect: there is no TLS bootstrap and no container runtime
    "bootstrap-kubeconfig": "",
    "container-runtime-endpoint": "",
    "pod-infra-container-image": "",
}


# --- settings --------------------------------------------------------------------------------

def _parse_taint(text: str) -> Object:
    """``key[=value]:Effect``, as --register-with-taints takes them."""
    key_value, _, effect = text.partition(":")
    key, _, value = key_value.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def _node_ip(flag: str, node_name: str) -> str | None:
    """--node-ip, else the node name's address when it is not a loopback one."""
    if flag:
        return flag
    try:
        address = socket.gethostbyname(node_name)
    except OSError:
        return None
    return None if address.startswith("127.") else address


@dataclass(frozen=True)
class KubeletSettings:
    """Flags over the KubeletConfiguration file (--config), as in the real kubelet."""

    kubeconfig: str
    node_name: str
    node_ip: str | None
    labels: dict[str, str]
    taints: list[Object]
    static_pod_path: Path | None
    root_dir: Path
    lease_duration: int
    status_update_frequency: float
    status_report_frequency: float

    @classmethod
    def from_flags(cls, flags: dict[str, FlagValue]) -> KubeletSettings:
        config = yaml.safe_load(Path(str(flags["config"])).read_text()) or {} if flags["config"] else {}
        node_name = (str(flags["hostname-override"]) or socket.gethostname()).lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch}
        for label in filter(None, str(flags["node-labels"]).split(",")):
            key, _, value = label.partition("=")
            labels[key] = value
        taints = list(config.get("registerWithTaints") or [])
        taints += [_parse_taint(t) for t in filter(None, str(flags["register-with-taints"]).split(","))]
        static_pod_path = str(flags["pod-manifest-path"]) or config.get("staticPodPath")
        return cls(
            kubeconfig=str(flags["kubeconfig"]),
            node_name=node_name,
            node_ip=_node_ip(str(flags["node-ip"]), node_name),
            labels=labels,
            taints=taints,
            static_pod_path=Path(static_pod_path) if static_pod_path else None,
            root_dir=Path(str(flags["root-dir"])),
            lease_duration=int(config.get("nodeLeaseDurationSeconds") or 40),
            status_update_frequency=parse_duration(str(config.get("nodeStatusUpdateFrequency") or "10s")),
            # the real default is 5m; the lab wants fresh heartbeats sooner
            status_report_frequency=parse_duration(str(config.get("nodeStatusReportFrequency") or "1m")),
        )


def _retrying(stopping: threading.Event, attempt: Callable[[], float | None],
              on_error: Callable[[ApiError], None]) -> None:
    """Call ``attempt`` until ``stopping``: after it returns, wait the seconds it returned (None:
    done); after an ApiError, retry after 200 ms doubling up to 7 s."""
    delay = FIRST_RETRY_DELAY
    while not stopping.is_set():
        try:
            wait = attempt()
        except ApiError as e:
            on_error(e)
            wait, delay = delay, min(delay * 2, MAX_RETRY_DELAY)
        else:
            if wait is None:
                return
            delay = FIRST_RETRY_DELAY
        stopping.wait(wait)


# --- the Node and its Lease ------------------------------------------------------------------

class NodeStatus:
    """Registers the Node and keeps its Ready condition True."""

    def __init__(self, client: KubeClient, settings: KubeletSettings, log: logging.Logger) -> None:
        self.client, self.settings, self.log = client, settings, log
        self.name = settings.node_name
        self._last_report = 0.0
        # stable per node name: lab hosts share the machine's /etc/machine-id
        self._machine_id = hashlib.sha256(self.name.encode()).hexdigest()[:32]

    def _status(self, current: Object | None) -> Object:
        ready = condition(current or {}, "Ready")
        now = kube_time()
        transition = ready["lastTransitionTime"] if ready and ready.get("status") == "True" else now
        addresses = [{"type": "Hostname", "address": self.name}]
        if self.settings.node_ip:
            addresses.insert(0, {"type": "InternalIP", "address": self.settings.node_ip})
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{_mem_total_kib()}Ki", "pods": "110"}
        return {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": transition}],
            "addresses": addresses,
            "capacity": capacity,
            "allocatable": capacity,
            # every field the typed clients require (the official Python client refuses a
            # NodeSystemInfo without them)
            "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                         "operatingSystem": "linux", "architecture": self.settings.labels["kubernetes.io/arch"],
                         "containerRuntimeVersion": "kubeha-lab://1", "osImage": "Debian GNU/Linux (kubeha lab)",
                         "kernelVersion": os.uname().release, "machineID": self._machine_id,
                         "systemUUID": self._machine_id, "bootID": self._machine_id},
        }

    def _post_status(self, current: Object | None) -> None:
        self.client.patch("nodes", self.name, {"status": self._status(current)}, subresource="status")
        self._last_report = time.monotonic()

    def register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": self.settings.labels},
                "spec": {"taints": self.settings.taints} if self.settings.taints else {},
                "status": self._status(None)}
        try:
            self.client.create("nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
            self._post_status(self.client.get("nodes", self.name))
            self.log.info("node %s was registered before; posted its status", self.name)
            return
        # a create may drop the status (as the real apiserver does): post it as well
        self._post_status(None)
        self.log.info("successfully registered node %s", self.name)

    def update(self) -> float:
        """Re-post the status when Ready is not True or a report is due; the seconds to the next check."""
        current = self.client.get("nodes", self.name)
        ready = condition(current, "Ready")
        if ready is None or ready.get("status") != "True":
            self.log.info("node %s is not Ready (%s); posting Ready status", self.name,
                          ready.get("reason") if ready else "no condition")
            self._post_status(current)
        elif time.monotonic() - self._last_report >= self.settings.status_report_frequency:
            self._post_status(current)
        return self.settings.status_update_frequency

    def run(self, stopping: threading.Event) -> None:
        _retrying(stopping, self.register, lambda e: self.log.warning("unable to register node %s: %s", self.name, e))
        _retrying(stopping, self.update,
                  lambda e: self.log.warning("error updating node status of %s: %s", self.name, e))


def _mem_total_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(meminfo.readline().split()[1])  # first line: "MemTotal: <n> kB"


class NodeLease:
    """Renews ``kube-node-lease/<node>`` every quarter of the lease duration."""

    def __init__(self, client: KubeClient, settings: KubeletSettings, log: logging.Logger) -> None:
        self.client, self.log = client, log
        self.name = settings.node_name
        self.duration = settings.lease_duration
        self.renew_interval = settings.lease_duration / 4
        self._lease: Object | None = None  # the last written Lease: renewals PUT it without a GET

    def renew(self) -> float:
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": self.duration, "renewTime": micro_time()}
        try:
            if self._lease is None:
                self._lease = self._get_or_create(spec)
            else:
                self._lease["spec"].update(spec)
                self._lease = self.client.update("leases", self._lease)
        except ApiError:
            self._lease = None  # stale or gone: read it afresh on the retry
            raise
        self.log.debug("renewed lease %s/%s", NODE_LEASE_NAMESPACE, self.name)
        return self.renew_interval

    def _get_or_create(self, spec: Object) -> Object:
        try:
            lease = self.client.get("leases", self.name, NODE_LEASE_NAMESPACE)
        except ApiError as e:
            if e.status != 404:
                raise
            return self.client.create("leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": NODE_LEASE_NAMESPACE}, "spec": spec,
            }, NODE_LEASE_NAMESPACE)
        lease["spec"] = {**(lease.get("spec") or {}), **spec}
        return self.client.update("leases", lease)

    def run(self, stopping: threading.Event) -> None:
        _retrying(stopping, self.renew, lambda e: self.log.warning(
            "failed to renew lease %s/%s: %s", NODE_LEASE_NAMESPACE, self.name, e))


# --- static pods -----------------------------------------------------------------------------

def _proc_start_time(pid: int) -> str | None:
    """The start time (clock ticks after boot) of a live process: tells it from a later one with
    the same pid. None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # fields from the 3rd on: the name may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass
class ContainerRecord:
    """A started container process, as kept in ``<root-dir>/lab-pods/<pod>/<container>.json``."""

    namespace: str
    pod: str
    container: str
    hash: str
    pid: int
    start_time: str
    started_at: str
    restarts: int

    def alive(self) -> bool:
        return _proc_start_time(self.pid) == self.start_time


@dataclass
class Container:
    name: str
    spec: Object
    record: ContainerRecord | None = None
    restarts: int = 0
    restart_delay: float = 0.0
    next_start: float = 0.0
    last_start: float = 0.0  # monotonic time of the last start or attempt


@dataclass(frozen=True)
class Manifest:
    hash: str
    pod: Object

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.pod["metadata"].get("namespace") or "default"


@dataclass
class StaticPod:
    manifest: Manifest
    started_at: str
    containers: list[Container] = field(default_factory=list)


def _signal_groups(records: list[ContainerRecord], sig: signal.Signals) -> None:
    """Signal each process's group: a container's children go with it."""
    for record in records:
        try:
            os.killpg(record.pid, sig)
        except ProcessLookupError:
            pass


class StaticPods:
    """Runs the pods of the manifests in ``manifest_dir`` as processes."""

    def __init__(self, manifest_dir: Path | None, root_dir: Path, log: logging.Logger) -> None:
        self.manifest_dir = manifest_dir
        self.records_dir = root_dir / "lab-pods"
        self.log = log
        self.pods: dict[str, StaticPod] = {}
        self.lock = threading.Lock()  # guards pods and a start with its record
        self.changed = threading.Event()  # set when the mirror pods need a sync
        self._parsed: dict[str, Manifest | None] = {}  # by content hash: parse each version once
        self._processes: dict[int, subprocess.Popen] = {}  # the container processes started here
        self._to_reap: list[subprocess.Popen] = []  # log shims; containers slow to die
        self.synced = threading.Event()  # set after the first sync: the pods are known
        self._adoptable = self._load_records()

    # manifests

    def _read_manifests(self) -> dict[str, Manifest]:
        manifests: dict[str, Manifest] = {}
        if self.manifest_dir is None or not self.manifest_dir.is_dir():
            return manifests
        parsed: dict[str, Manifest | None] = {}
        for path in sorted(self.manifest_dir.iterdir()):
            if path.name.startswith(".") or path.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                content = path.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(content).hexdigest()[:32]
            parsed[digest] = self._parsed[digest] if digest in self._parsed else self._parse(path, content, digest)
            if parsed[digest] is not None:
                manifests[parsed[digest].name] = parsed[digest]
        self._parsed = parsed
        return manifests

    def _parse(self, path: Path, content: bytes, digest: str) -> Manifest | None:
        try:
            pod = yaml.safe_load(content)
            if not (isinstance(pod, dict) and pod.get("kind") == "Pod" and pod["metadata"]["name"]):
                raise ValueError("not a Pod with a name")
            if not all(c.get("name") for c in pod["spec"]["containers"]):
                raise ValueError("a container has no name")
        except (yaml.YAMLError, ValueError, KeyError, TypeError) as e:
            self.log.error("ignoring static pod manifest %s: %s", path, e)
            return None
        return Manifest(digest, pod)

    # records of started processes

    def _record_path(self, pod: str, container: str) -> Path:
        return self.records_dir / pod / f"{container}.json"

    def _load_records(self) -> dict[tuple[str, str], ContainerRecord]:
        """The live container processes an earlier kubelet started; drop the records of dead ones."""
        live: dict[tuple[str, str], ContainerRecord] = {}
        for path in self.records_dir.glob("*/*.json"):
            try:
                record = ContainerRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                record = None
            if record is not None and record.alive():
                live[record.pod, record.container] = record
            else:
                self._forget(path)
        return live

    def _save(self, record: ContainerRecord) -> None:
        path = self._record_path(record.pod, record.container)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(record)))
        partial.replace(path)

    @staticmethod
    def _forget(path: Path) -> None:
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass  # other containers of the pod are still recorded

    # processes

    def _spawn(self, pod: StaticPod, container: Container) -> ContainerRecord:
        manifest, spec = pod.manifest, container.spec
        if not spec.get("command"):
            raise OSError("no command: static pods here run commands, not images")
        argv = [str(a) for a in spec["command"] + (spec.get("args") or [])]
        env = {"PATH": CONTAINER_PATH, "HOSTNAME": socket.gethostname()}
        env.update({e["name"]: str(e.get("value", "")) for e in spec.get("env") or []})
        executable = shutil.which(argv[0], path=env["PATH"])
        if executable is None:
            raise OSError(f"executable {argv[0]!r} not found in {env['PATH']}")
        log_file = POD_LOG_DIR / f"{manifest.namespace}_{manifest.name}" / f"{container.name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        try:
            with open(log_file, "ab") as log_output:
                self._to_reap.append(subprocess.Popen(
                    LOG_SHIM, stdin=read_end, stdout=log_output, stderr=subprocess.DEVNULL,
                    env={"TZ": "UTC", "PATH": CONTAINER_PATH}, start_new_session=True))
            nice = lab_nice(container.name)
            process = subprocess.Popen(argv, executable=executable, stdin=subprocess.DEVNULL, stdout=write_end,
                                       stderr=write_end, env=env, cwd=spec.get("workingDir") or "/",
                                       start_new_session=True,
                                       preexec_fn=(lambda: os.nice(nice)) if nice else None)  # one syscall
        finally:
            os.close(read_end)
            os.close(write_end)
        self._processes[process.pid] = process
        return ContainerRecord(
            namespace=manifest.namespace, pod=manifest.name, container=container.name, hash=manifest.hash,
            pid=process.pid, start_time=_proc_start_time(process.pid) or "", started_at=kube_time(),
            restarts=container.restarts)

    def _start(self, pod: StaticPod, container: Container) -> None:
        container.last_start = time.monotonic()
        try:
            record = self._spawn(pod, container)
        except OSError as e:
            self.log.error("cannot start container %s of static pod %s: %s", container.name, pod.manifest.name, e)
            self._schedule_restart(container, time.monotonic())
            return
        self._save(record)
        container.record = record
        self.log.info("started container %s of static pod %s (pid %d)", container.name, pod.manifest.name,
                      record.pid)
        self.changed.set()

    def _schedule_restart(self, container: Container, now: float) -> None:
        # back off 1 s doubling to 10 s; a container that ran longer than that starts over at 1 s
        ran_long = now - container.last_start > MAX_RESTART_DELAY
        container.restart_delay = 1.0 if ran_long else min(max(container.restart_delay * 2, 1.0),
                                                          MAX_RESTART_DELAY)
        container.next_start = now + container.restart_delay
        container.restarts += 1

    def _stop(self, records: list[ContainerRecord]) -> None:
        """SIGTERM the live processes' groups, SIGKILL what is left after the grace period."""
        live = [r for r in records if r.alive()]
        _signal_groups(live, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while (live := [r for r in live if r.alive()]) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_groups(live, signal.SIGKILL)
        for record in records:
            self._exit_code(record.pid)
            self.log.info("stopped container %s of static pod %s (pid %d)", record.container, record.pod,
                          record.pid)
            self._forget(self._record_path(record.pod, record.container))

    def _exit_code(self, pid: int) -> int | None:
        """Reap a container process that ended; None for one adopted from an earlier kubelet."""
        process = self._processes.pop(pid, None)
        if process is None:
            return None
        try:
            return process.wait(1)
        except subprocess.TimeoutExpired:
            self._to_reap.append(process)
            return None

    def _new_pod(self, manifest: Manifest) -> StaticPod:
        pod = StaticPod(manifest, started_at=kube_time())
        for spec in manifest.pod.get("spec", {}).get("containers") or []:
            container = Container(spec["name"], spec)
            adopted = self._adoptable.pop((manifest.name, container.name), None)
            if adopted is not None:
                container.record, container.restarts = adopted, adopted.restarts
                container.last_start = time.monotonic()
                pod.started_at = min(pod.started_at, adopted.started_at)
                self.log.info("adopted running container %s of static pod %s (pid %d)", container.name,
                              manifest.name, adopted.pid)
            pod.containers.append(container)
        return pod

    def _supervise(self, pod: StaticPod, now: float) -> None:
        for container in pod.containers:
            record = container.record
            if record is not None and not record.alive():
                code = self._exit_code(record.pid)
                self._schedule_restart(container, now)
                self.log.warning("container %s of static pod %s exited (code %s); restarting in %.0f s",
                                 container.name, pod.manifest.name, code, container.restart_delay)
                container.record = None
                self.changed.set()
            if container.record is None and now >= container.next_start:
                self._start(pod, container)

    def sync(self) -> None:
        """Match the processes to the manifests; restart exited containers when their backoff is over."""
        self._to_reap = [p for p in self._to_reap if p.poll() is None]
        manifests = self._read_manifests()
        with self.lock:
            gone = [self.pods.pop(name) for name, pod in list(self.pods.items())
                    if (m := manifests.get(name)) is None or m.hash != pod.manifest.hash]
            # processes of an earlier kubelet whose manifest changed or went away
            stale = [r for r in self._adoptable.values()
                     if (m := manifests.get(r.pod)) is None or m.hash != r.hash]
            for record in stale:
                del self._adoptable[record.pod, record.container]
        stopping = stale + [c.record for pod in gone for c in pod.containers if c.record is not None]
        if stopping:
            self._stop(stopping)
            self.changed.set()
        now = time.monotonic()
        with self.lock:
            for name, manifest in manifests.items():
                if name not in self.pods:
                    self.pods[name] = self._new_pod(manifest)
                    self.changed.set()
                self._supervise(self.pods[name], now)

    def run(self, stopping: threading.Event) -> None:
        while True:
            try:
                self.sync()
            except Exception:  # a supervisor must outlive one bad sync (say a full disk)
                self.log.exception("error syncing static pods")
            self.synced.set()
            if stopping.wait(MANIFEST_POLL_SECONDS):
                return

    # mirror pods

    def mirror_pods(self, node_name: str, node_ip: str | None) -> dict[tuple[str, str], Object]:
        """The mirror pod each static pod should have in the API, by (namespace, name)."""
        with self.lock:
            return {(pod.manifest.namespace, f"{pod.manifest.name}-{node_name}"): _mirror_pod(pod, node_name, node_ip)
                    for pod in self.pods.values()}


def ready_condition(ready: bool) -> Object:
    return {"type": "Ready", "status": "True" if ready else "False"}


def _mirror_pod(pod: StaticPod, node_name: str, node_ip: str | None) -> Object:
    manifest = pod.manifest
    meta = manifest.pod["metadata"]
    statuses = []
    for c in pod.containers:
        running = c.record is not None
        status: Object = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
                          "ready": running, "started": running, "restartCount": c.restarts}
        if c.record is not None:
            status["containerID"] = f"lab://{c.record.pid}"
            status["state"] = {"running": {"startedAt": c.record.started_at}}
        else:
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        statuses.append(status)
    ready = all(s["ready"] for s in statuses)
    pod_status: Object = {"phase": "Running", "startTime": pod.started_at,
                          "conditions": [ready_condition(ready)], "containerStatuses": statuses}
    if node_ip:
        pod_status["hostIP"] = pod_status["podIP"] = node_ip  # static pods use the host network
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{manifest.name}-{node_name}", "namespace": manifest.namespace,
                     "labels": meta.get("labels") or {},
                     "annotations": {**(meta.get("annotations") or {}), MIRROR_ANNOTATION: manifest.hash,
                                     "kubernetes.io/config.hash": manifest.hash,
                                     "kubernetes.io/config.source": "file"}},
        "spec": {**(manifest.pod.get("spec") or {}), "nodeName": node_name},
        "status": pod_status,
    }


# --- pods in the API -------------------------------------------------------------------------

class NodePods:
    """Keeps the mirror pods of the static pods in the API and marks the node's API pods Running."""

    def __init__(self, client: KubeClient, settings: KubeletSettings, static_pods: StaticPods,
                 log: logging.Logger) -> None:
        self.client, self.settings, self.static_pods, self.log = client, settings, static_pods, log

    def _post_status(self, pod: Object, status: Object) -> None:
        meta = pod["metadata"]
        self.client.patch("pods", meta["name"], {"status": status}, meta.get("namespace"), "status")

    def sync(self) -> None:
        node = self.settings.node_name
        mirrors = self.static_pods.mirror_pods(node, self.settings.node_ip)
        missing = dict(mirrors)
        for pod in self.client.list("pods", field_selector=f"spec.nodeName={node}"):
            meta = pod["metadata"]
            if (pod.get("spec") or {}).get("nodeName") != node:
                continue  # a server that ignores the field selector
            key = (meta.get("namespace"), meta["name"])
            mirror_hash = (meta.get("annotations") or {}).get(MIRROR_ANNOTATION)
            if mirror_hash is not None:
                wanted = mirrors.get(key)
                if wanted is None or wanted["metadata"]["annotations"][MIRROR_ANNOTATION] != mirror_hash:
                    self.client.delete("pods", meta["name"], meta.get("namespace"))
                    self.log.info("deleted mirror pod %s/%s", *key)
                    continue
                del missing[key]
                if pod.get("status") != wanted["status"]:
                    self._post_status(pod, wanted["status"])
            elif (pod.get("status") or {}).get("phase") != "Running" or \
                    (condition(pod, "Ready") or {}).get("status") != "True":
                status: Object = {"phase": "Running", "startTime": kube_time(), "conditions": [ready_condition(True)]}
                if self.settings.node_ip:
                    status["hostIP"] = self.settings.node_ip
                self._post_status(pod, status)
                self.log.info("pod %s/%s is running", *key)
        for key, mirror in missing.items():
            created = self.client.create("pods", mirror, key[0])
            if created.get("status") != mirror["status"]:
                self._post_status(created, mirror["status"])
            self.log.info("created mirror pod %s/%s", *key)

    def run(self, stopping: threading.Event) -> None:
        changed = self.static_pods.changed
        self.static_pods.synced.wait()  # mirrors of pods not known yet would look orphaned
        while not stopping.is_set():
            changed.clear()
            try:
                self.sync()
            except ApiError as e:
                self.log.warning("error syncing pods of node %s: %s", self.settings.node_name, e)
            changed.wait(POD_SYNC_SECONDS)


# --- main ------------------------------------------------------------------------------------

def _background(target: Callable[[threading.Event], None], stopping: threading.Event) -> None:
    threading.Thread(target=target, args=(stopping,), name=target.__qualname__, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    flags, log, stopping = start_standin("kubelet", argv, FLAGS)
    try:
        settings = KubeletSettings.from_flags(flags)
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as e:
        log.error("cannot read the kubelet configuration: %s", e)
        return 1
    client = connect(settings.kubeconfig, log) if settings.kubeconfig else None
    if settings.kubeconfig and client is None:
        return 1
    log.info("kubelet %s starting as node %s (static pods: %s)", KUBELET_VERSION, settings.node_name,
             settings.static_pod_path or "none")
    static_pods = StaticPods(settings.static_pod_path, settings.root_dir, log)
    _background(static_pods.run, stopping)
    if client is None:
        log.info("no --kubeconfig: standalone, static pods only")
    else:
        _background(NodeStatus(client, settings, log).run, stopping)
        _background(NodeLease(client, settings, log).run, stopping)
        _background(NodePods(client, settings, static_pods, log).run, stopping)
    stopping.wait()
    with static_pods.lock:  # never leave a just-started container unrecorded
        log.info("stopped; static pods keep running")
        return 0


if __name__ == "__main__":
    sys.exit(main())
