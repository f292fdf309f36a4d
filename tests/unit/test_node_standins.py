"""The node stand-ins (kubelet, kube-controller-manager, kube-scheduler) as processes, against
the kube-apiserver stand-in on a real TLS etcd, all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from helpers.wait import wait_for
import yaml
from helpers.etcd import EtcdCluster, etcd_cluster, free_port, tls_context, wait_for_https, write_pair

from kubeha import pki
from kubeha.errors import KubehaError
from kubeha.lab.standins.common import parse_duration, parse_flags, start_standin
from kubeha.lab.standins.kubeclient import ApiError, KubeClient, condition, tls_context as kube_tls_context
from kubeha.lab.standins.kubelet import POD_LOG_DIR, ContainerRecord
from kubeha.render.kubeconfig import render_kubeconfig

TIMESTAMPED = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"
SHORT_ELECTION = ["--leader-elect-lease-duration=2s", "--leader-elect-renew-deadline=1s",
                  "--leader-elect-retry-period=500ms"]


# --- pure -------------------------------------------------------------------------------------

def test_flags_take_both_forms_and_collect_unknown_ones():
    values, unknown = parse_flags(
        ["--kubeconfig", "/k", "--leader-elect", "--v=4", "--bind-address", "0.0.0.0", "--profiling",
         "--leader-elect-retry-period=500ms"],
        {"kubeconfig": "", "leader-elect": False, "leader-elect-retry-period": "2s", "v": "0"})
    assert values == {"kubeconfig": "/k", "leader-elect": True, "leader-elect-retry-period": "500ms", "v": "4"}
    assert unknown == ["--bind-address", "--profiling"]
    assert parse_flags(["--leader-elect=false"], {"leader-elect": True})[0] == {"leader-elect": False}


def test_durations_are_go_durations():
    assert [parse_duration(d) for d in ("40s", "5s", "1m", "500ms", "1m30s", "1h", "0")] == \
        [40, 5, 60, 0.5, 90, 3600, 0]
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_kubeconfig_with_files_relative_to_it(tmp_path):
    ca = pki.new_ca("kubernetes")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    write_pair(tmp_path, "user", pki.issue(ca, "someone", client=True))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "current-context": "b",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1",
                                              "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u", "user": {"client-certificate": "user.crt", "client-key": "user.key"}}],
        "contexts": [{"name": "a", "context": {"cluster": "x", "user": "x"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u"}}],
    }))
    server, tls = kube_tls_context(kubeconfig)
    assert server == "https://127.0.0.1:1"
    assert tls.get_ca_certs()[0]["subject"] == ((("commonName", "kubernetes"),),)
    kubeconfig.write_text("current-context: nowhere\n")
    with pytest.raises(KubehaError, match="kubeconfig"):
        kube_tls_context(kubeconfig)


def test_logs_are_timestamped_and_unknown_flags_warned_once(capsys):
    flags, log, stopping = start_standin("kube-test", ["--kubeconfig=/k", "--a=1", "--b", "2"], {"kubeconfig": ""})
    try:
        assert flags["kubeconfig"] == "/k" and not stopping.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.wait(1)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"{TIMESTAMPED} WARNING kube-test: ignoring unknown flags: --a --b", lines[0])
    assert lines[1].endswith("received SIGTERM, stopping")


# --- a control plane --------------------------------------------------------------------------

def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    """``check()``'s first truthy value; ApiErrors count as not yet."""
    return wait_for(check, timeout, what, ignore=(ApiError,))


@dataclass
class Standin:
    """A stand-in process with its stderr in a log file."""

    module: str
    args: list[str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> Standin:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", f"kubeha.lab.standins.{self.module}", *self.args],
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def text(self) -> str:
        return self.log.read_text()


@dataclass
class ApiServer:
    """The apiserver stand-in on a fixed port, to stop and start again."""

    standin: Standin
    url: str
    ready_context: ssl.SSLContext

    def start(self) -> None:
        self.standin.start()
        wait_for_https(f"{self.url}/readyz", self.ready_context)

    def stop(self) -> None:
        self.standin.kill()


@dataclass
class Lab:
    directory: Path
    ca: pki.KeyAndCert
    apiserver: ApiServer

    @cached_property
    def admin(self) -> KubeClient:
        return KubeClient(self.kubeconfig("kubernetes-admin", ("system:masters",)))

    def kubeconfig(self, user: str, organizations: tuple[str, ...] = ()) -> Path:
        """A kubeadm-style kubeconfig (credentials embedded) for ``user``."""
        pair = pki.issue(self.ca, user, organizations=organizations, client=True)
        path = self.directory / f"{user.replace(':', '-')}.conf"
        path.write_text(render_kubeconfig(cluster_name="lab", server=self.apiserver.url, ca_pem=self.ca.cert_pem,
                                          client_cert_pem=pair.cert_pem, client_key_pem=pair.key_pem, user=user))
        return path


def _start_apiserver(directory: Path, ca: pki.KeyAndCert, etcd: EtcdCluster) -> ApiServer:
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    serving = pki.issue(ca, "kube-apiserver", server=True,
                        sans=pki.SubjectAltNames(ip_addresses=(IPv4Address("127.0.0.1"),)))
    cert, key = write_pair(directory, "apiserver", serving)
    etcd_cert, etcd_key = write_pair(directory, "apiserver-etcd-client",
                                     pki.issue(etcd.ca, "kube-apiserver-etcd-client", client=True))
    probe_cert, probe_key = write_pair(directory, "probe", pki.issue(ca, "probe", client=True))
    port = free_port()
    server = ApiServer(Standin("apiserver", [
        "--bind-address=127.0.0.1", f"--secure-port={port}", f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}", f"--client-ca-file={ca_file}",
        f"--etcd-servers={','.join(etcd.endpoints)}", f"--etcd-cafile={etcd.ca_file}",
        f"--etcd-certfile={etcd_cert}", f"--etcd-keyfile={etcd_key}",
    ], directory / "apiserver.log"), f"https://127.0.0.1:{port}", tls_context(ca_file, probe_cert, probe_key))
    server.start()
    return server


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("node-standins")
    ca = pki.new_ca("kubernetes")
    with etcd_cluster(directory / "etcd") as etcd:
        apiserver = _start_apiserver(directory, ca, etcd)
        try:
            yield Lab(directory, ca, apiserver)
        finally:
            apiserver.stop()


@pytest.fixture
def standins(tmp_path) -> Iterator[Callable[..., Standin]]:
    """Start stand-ins (``standins(module, *args, name=...)``); every one is killed at the end."""
    started: list[Standin] = []

    def start(module: str, *args: str, name: str | None = None) -> Standin:
        standin = Standin(module, list(args), tmp_path / f"{name or module}.log").start()
        started.append(standin)
        return standin

    try:
        yield start
    finally:
        for standin in started:
            standin.kill()


def kubelet_args(lab: Lab, directory: Path, node: str, **config: object) -> list[str]:
    """Flags as kubeadm's kubelet unit passes them, with a KubeletConfiguration of ``config``."""
    config_file = directory / f"{node}-config.yaml"
    config_file.write_text(yaml.safe_dump({"apiVersion": "kubelet.config.k8s.io/v1beta1",
                                           "kind": "KubeletConfiguration", **config}))
    return [f"--kubeconfig={lab.kubeconfig(f'system:node:{node}', ('system:nodes',))}", f"--config={config_file}",
            f"--hostname-override={node}", "--node-ip=127.0.0.1", f"--root-dir={directory / node}",
            "--container-runtime-endpoint=unix:///run/containerd/containerd.sock"]


def node_ready(lab: Lab, node: str) -> str | None:
    ready = condition(lab.admin.get("nodes", node), "Ready")
    return ready and ready["status"]


def lease_spec(lab: Lab, namespace: str, name: str) -> dict:
    return lab.admin.get("leases", name, namespace)["spec"]


# --- kubelet ----------------------------------------------------------------------------------

def test_kubelet_registers_its_node_and_renews_its_lease_through_an_outage(lab, standins, tmp_path):
    node = f"node-{uuid.uuid4().hex[:6]}"
    lab.admin.create("pods", {"metadata": {"name": f"app-{node}"},
                              "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]}}, "default")
    # a 4 s lease is renewed every second, as the real kubelet renews at a quarter of it
    kubelet = standins("kubelet", *kubelet_args(lab, tmp_path, node, nodeLeaseDurationSeconds=4),
                       "--node-labels=lab/role=worker", "--register-with-taints=lab/dedicated=infra:NoSchedule",
                       "--cgroup-driver=systemd")
    wait_until(lambda: node_ready(lab, node) == "True", 10, f"node {node} Ready")
    registered = lab.admin.get("nodes", node)
    assert registered["metadata"]["labels"] | {"lab/role": "worker", "kubernetes.io/hostname": node,
                                               "kubernetes.io/os": "linux"} == registered["metadata"]["labels"]
    assert registered["spec"]["taints"] == [{"key": "lab/dedicated", "value": "infra", "effect": "NoSchedule"}]
    assert {"type": "InternalIP", "address": "127.0.0.1"} in registered["status"]["addresses"]
    assert registered["status"]["nodeInfo"]["kubeletVersion"] == "v1.30.0"
    assert condition(registered, "Ready")["reason"] == "KubeletReady"

    first = wait_until(lambda: lease_spec(lab, "kube-node-lease", node), 5, "the node lease")
    assert (first["holderIdentity"], first["leaseDurationSeconds"]) == (node, 4)
    wait_until(lambda: lease_spec(lab, "kube-node-lease", node)["renewTime"] != first["renewTime"], 3,
               "a second renewal")
    app = wait_until(lambda: (p := lab.admin.get("pods", f"app-{node}", "default"))["status"]["phase"] == "Running"
                     and p, 12, "the API pod Running")
    assert condition(app, "Ready")["status"] == "True"

    lab.apiserver.stop()
    try:
        failure = re.compile(rf"^{TIMESTAMPED} WARNING kubelet: failed to renew lease kube-node-lease/{node}: ", re.M)
        wait_until(lambda: len(failure.findall(kubelet.text())) >= 2, 5, "failed renewals in the log")
    finally:
        lab.apiserver.start()
    before = lease_spec(lab, "kube-node-lease", node)["renewTime"]
    wait_until(lambda: lease_spec(lab, "kube-node-lease", node)["renewTime"] > before, 8, "renewals after the outage")
    assert kubelet.text().count("ignoring unknown flags: --cgroup-driver") == 1
    assert kubelet.terminate() == 0


def test_kubelet_runs_static_pods_that_survive_its_restart(lab, standins, tmp_path):
    node = f"node-{uuid.uuid4().hex[:6]}"
    manifests, records = tmp_path / "manifests", tmp_path / node / "lab-pods"
    manifests.mkdir()
    pod = f"web-{node}"
    marker = uuid.uuid4().hex  # in each container's environment: counts its processes

    def manifest(greeting: str) -> str:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "kube-system"},
                               "spec": {"hostNetwork": True, "containers": [{
                                   "name": "server", "image": "registry.k8s.io/pause:3.9",
                                   "command": ["sh", "-c"], "args": ['echo "hello $GREETING"; exec sleep 600'],
                                   "env": [{"name": "GREETING", "value": greeting}, {"name": "MARKER", "value": marker}],
                               }]}})

    def pids() -> list[int]:
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"MARKER={marker}".encode() in environ.read_bytes().split(b"\0"):
                    found.append(int(environ.parent.name))
            except OSError:
                pass
        return found

    def recorded_pid() -> int:
        return json.loads((records / pod / "server.json").read_text())["pid"]

    log_file = POD_LOG_DIR / f"kube-system_{pod}" / "server.log"
    crash_log = POD_LOG_DIR / f"kube-system_crash-{node}" / "crash.log"
    args = kubelet_args(lab, tmp_path, node, staticPodPath=str(manifests))
    try:
        (manifests / f"{pod}.yaml").write_text(manifest("one"))
        (manifests / "crash.yml").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"crash-{node}", "namespace": "kube-system"},
            "spec": {"containers": [{"name": "crash", "command": ["sh", "-c", "echo run; exit 3"]}]}}))
        (manifests / "notes.txt").write_text("not a manifest")
        kubelet = standins("kubelet", *args)
        wait_until(lambda: len(pids()) == 1 and "hello one" in log_file.read_text(), 10, "the static pod running")
        first = pids()[0]
        assert recorded_pid() == first
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ hello one\n", log_file.read_text())
        mirror = wait_until(lambda: lab.admin.get("pods", f"{pod}-{node}", "kube-system"), 5, "the mirror pod")
        annotations = mirror["metadata"]["annotations"]
        assert annotations["kubernetes.io/config.source"] == "file"
        assert annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
        assert mirror["spec"]["nodeName"] == node
        wait_until(lambda: lab.admin.get("pods", f"{pod}-{node}", "kube-system")["status"]["phase"] == "Running",
                   5, "the mirror pod Running")

        # a container that exits is restarted after 1 s, then 2 s
        wait_until(lambda: crash_log.exists() and crash_log.read_text().count("run") >= 3, 8, "crash restarts")
        assert "container crash of static pod crash-" in kubelet.text() and "exited (code 3)" in kubelet.text()

        # a changed manifest replaces the process
        (manifests / f"{pod}.yaml").write_text(manifest("two"))
        wait_until(lambda: pids() and pids() != [first] and "hello two" in log_file.read_text(), 15,
                   "the new process")
        second = pids()[0]
        assert not Path(f"/proc/{first}").exists() and recorded_pid() == second
        wait_until(lambda: lab.admin.get("pods", f"{pod}-{node}", "kube-system")["metadata"]["annotations"]
                   ["kubernetes.io/config.mirror"] != annotations["kubernetes.io/config.mirror"], 5,
                   "the mirror pod of the new manifest")

        # the kubelet stops at once, its pod keeps running, a new kubelet adopts it
        assert kubelet.terminate() == 0
        assert pids() == [second]
        kubelet = standins("kubelet", *args, name="kubelet-again")
        wait_until(lambda: "adopted running container server" in kubelet.text(), 5, "the adoption")
        time.sleep(2)
        assert pids() == [second]
        assert log_file.read_text().count("hello two") == 1

        # a removed manifest stops the pod and deletes its mirror
        (manifests / f"{pod}.yaml").unlink()
        wait_until(lambda: not pids() and not (records / pod).exists(), 5, "the pod stopped")

        def mirror_gone() -> bool:
            try:
                lab.admin.get("pods", f"{pod}-{node}", "kube-system")
            except ApiError as e:
                return e.status == 404
            return False

        wait_until(mirror_gone, 5, "the mirror pod deleted")
    finally:
        (manifests / "crash.yml").unlink(missing_ok=True)
        for path in records.glob("*/*.json"):
            record = ContainerRecord(**json.loads(path.read_text()))
            if record.alive():
                os.killpg(record.pid, signal.SIGKILL)
        for pid in pids():
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(log_file.parent, ignore_errors=True)
        shutil.rmtree(crash_log.parent, ignore_errors=True)


# --- controller-manager and scheduler ---------------------------------------------------------

@pytest.mark.parametrize("module, component", [("controller_manager", "kube-controller-manager"),
                                               ("scheduler", "kube-scheduler")])
def test_one_leader_and_failover_within_the_lease_duration(lab, standins, module, component):
    kubeconfig = lab.kubeconfig(f"system:{component}")
    candidates = [standins(module, f"--kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", *SHORT_ELECTION,
                           name=f"{module}-{i}") for i in range(2)]

    def leaders() -> list[Standin]:
        return [c for c in candidates if "became leader" in c.text()]

    leader = wait_until(lambda: len(leaders()) == 1 and leaders()[0], 5, "a leader")
    time.sleep(1.5)
    assert leaders() == [leader]
    lease = lease_spec(lab, "kube-system", component)
    assert re.fullmatch(r"[^_]+_[0-9a-f-]{36}", lease["holderIdentity"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", lease["renewTime"])
    assert lease["leaseDurationSeconds"] == 2

    leader.kill()
    wait_until(lambda: len(leaders()) == 2, 15, "the other candidate leading")
    taken = lease_spec(lab, "kube-system", component)
    assert taken["holderIdentity"] != lease["holderIdentity"]
    assert taken["leaseTransitions"] == lease["leaseTransitions"] + 1


def test_controller_manager_marks_a_silent_node_unknown_and_clears_it(lab, standins, tmp_path):
    node = f"node-{uuid.uuid4().hex[:6]}"
    kubelet_flags = kubelet_args(lab, tmp_path, node, nodeLeaseDurationSeconds=4)
    kubelet = standins("kubelet", *kubelet_flags)
    standins("controller_manager", f"--kubeconfig={lab.kubeconfig('system:kube-controller-manager')}",
             "--leader-elect=false", "--node-monitor-grace-period=3s", "--node-monitor-period=500ms")
    wait_until(lambda: node_ready(lab, node) == "True", 10, f"node {node} Ready")
    time.sleep(4)  # longer than the grace period: a renewing kubelet keeps the node Ready
    assert node_ready(lab, node) == "True"

    assert kubelet.terminate() == 0
    wait_until(lambda: node_ready(lab, node) == "Unknown", 8, f"node {node} Unknown")
    marked = lab.admin.get("nodes", node)
    ready = condition(marked, "Ready")
    assert (ready["reason"], ready["message"]) == ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    wait_until(lambda: any(t["key"] == "node.kubernetes.io/unreachable" and t["effect"] == "NoExecute"
                           for t in lab.admin.get("nodes", node)["spec"].get("taints") or []), 3, "the taint")
    events = [e for e in lab.admin.list("events", "default") if e["involvedObject"]["name"] == node]
    assert [(e["reason"], e["type"], e["message"], e["source"]["component"]) for e in events] == \
        [("NodeNotReady", "Normal", f"Node {node} status is now: NodeNotReady", "node-controller")]

    standins("kubelet", *kubelet_flags, name="kubelet-again")
    wait_until(lambda: node_ready(lab, node) == "True" and not lab.admin.get("nodes", node)["spec"].get("taints"),
               6, "the node Ready and untainted")
