"""The kube-apiserver stand-in as a process, against real TLS etcd, driven by httpx, the
official Python client and the real kubectl."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import kubernetes
import pytest
from helpers.etcd import (EtcdCluster, etcd_cluster, free_port, tls_context, wait_for_https,
                          write_pair)

from kubeha import pki
from kubeha.lab.standins.apiserver import human_duration

KUBECTL = "/usr/bin/kubectl"


@dataclass
class ClusterCerts:
    """Files of a cluster CA, the apiserver's serving cert and an admin client cert."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path


def make_cluster_certs(directory: Path) -> ClusterCerts:
    ca = pki.new_ca("kubernetes")
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    server = pki.issue(ca, "kube-apiserver", server=True,
                       sans=pki.SubjectAltNames(ip_addresses=(IPv4Address("127.0.0.1"),)))
    admin = pki.issue(ca, "kubernetes-admin", organizations=("system:masters",), client=True)
    return ClusterCerts(ca_file, *write_pair(directory, "apiserver", server),
                        *write_pair(directory, "admin", admin))


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def apiserver(directory: Path, certs: ClusterCerts, etcd: EtcdCluster) -> Iterator[ApiServer]:
    """Run the stand-in on a free 127.0.0.1 port until the block ends; wait until ready."""
    etcd_cert, etcd_key = write_pair(directory, "apiserver-etcd-client",
                                     pki.issue(etcd.ca, "kube-apiserver-etcd-client", client=True))
    port = free_port()
    log = directory / f"apiserver-{port}.log"
    args = [
        "--advertise-address=127.0.0.1", "--bind-address", "127.0.0.1", f"--secure-port={port}",
        f"--tls-cert-file={certs.server_cert}", f"--tls-private-key-file={certs.server_key}",
        f"--client-ca-file={certs.ca_file}", f"--etcd-servers={','.join(etcd.endpoints)}",
        f"--etcd-cafile={etcd.ca_file}", f"--etcd-certfile={etcd_cert}",
        f"--etcd-keyfile={etcd_key}", "--allow-privileged=true", "--authorization-mode",
        "Node,RBAC",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kubeha.lab.standins.apiserver", *args],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        server = ApiServer(f"https://127.0.0.1:{port}", process, log)
        wait_for_https(f"{server.url}/readyz", admin_context(certs))
        yield server
    finally:
        process.kill()
        process.wait()


def admin_context(certs: ClusterCerts) -> ssl.SSLContext:
    return tls_context(certs.ca_file, certs.admin_cert, certs.admin_key)


def write_kubeconfig(path: Path, server: str, certs: ClusterCerts) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server,
                                                 "certificate-authority": str(certs.ca_file)}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(certs.admin_cert),
                                             "client-key": str(certs.admin_key)}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
    }))
    return path


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("apiserver")
    certs = make_cluster_certs(directory)
    with etcd_cluster(directory / "etcd") as etcd, apiserver(directory, certs, etcd) as server:
        yield directory, certs, etcd, server


@pytest.fixture(scope="module")
def api(lab):
    _, certs, _, server = lab
    with httpx.Client(base_url=server.url, verify=admin_context(certs), timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(lab):
    _, certs, _, server = lab
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    with httpx.Client(base_url=server.url, verify=context, timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def kubeconfig(lab):
    directory, certs, _, server = lab
    return write_kubeconfig(directory / "kubeconfig", server.url, certs)


def kubectl(kubeconfig: Path, *args: str) -> str:
    """Run kubectl; fail on a non-zero exit or anything on stderr (warnings included)."""
    done = subprocess.run([KUBECTL, f"--kubeconfig={kubeconfig}", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def node(name: str, ready: bool = True, role: str | None = "control-plane") -> dict:
    labels = {"kubernetes.io/hostname": name}
    if role:
        labels[f"node-role.kubernetes.io/{role}"] = ""
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   # every field: the Python client refuses a NodeSystemInfo without one
                   "nodeInfo": {"kubeletVersion": "v1.30.0", "kubeProxyVersion": "v1.30.0",
                                "architecture": "amd64", "operatingSystem": "linux",
                                "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0",
                                "containerRuntimeVersion": "containerd://1.7.0",
                                "bootID": name, "machineID": name, "systemUUID": name}},
    }


def pod(name: str, node_name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name.split("-")[0]}},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "pause"}]}}


def created(response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def test_human_duration_matches_kubectl():
    ages = {5: "5s", 150: "2m30s", 600: "10m", 3 * 3600 + 60: "3h1m", 8 * 3600: "8h",
            50 * 3600: "2d2h", 9 * 86400: "9d", 800 * 86400: "2y70d", 3000 * 86400: "8y"}
    assert {seconds: human_duration(seconds) for seconds in ages} == ages


# --- anonymous and health --------------------------------------------------------------


def test_anonymous_may_read_health_and_version_only(anonymous):
    for path in ("/healthz", "/livez", "/readyz"):
        response = anonymous.get(path)
        assert (response.status_code, response.text) == (200, "ok")
    verbose = anonymous.get("/readyz?verbose")
    assert "[+]etcd ok" in verbose.text and verbose.text.endswith("readyz check passed\n")
    assert anonymous.get("/version").json()["gitVersion"] == "v1.30.0-kubeha-lab"
    denied = anonymous.get("/api/v1/nodes")
    assert denied.status_code == 401
    assert denied.json()["kind"] == "Status" and denied.json()["reason"] == "Unauthorized"


# --- the REST API over httpx -----------------------------------------------------------


def test_configmap_lifecycle_and_errors(api):
    path = "/api/v1/namespaces/default/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "life"},
            "data": {"a": "1"}}
    cm = created(api.post(path, json=body))
    meta = cm["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) > 0

    again = api.post(path, json=body)
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    assert api.get(f"{path}/life").json() == cm

    fresh = dict(cm, data={"a": "2"})
    updated = api.put(f"{path}/life", json=fresh)
    assert updated.status_code == 200
    assert int(updated.json()["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    stale = api.put(f"{path}/life", json=dict(cm, data={"a": "3"}))
    assert stale.status_code == 409
    assert stale.json() | {"message": ""} == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "", "reason": "Conflict", "code": 409,
        "details": {"name": "life", "group": "", "kind": "configmaps"}}

    deleted = api.delete(f"{path}/life")
    assert deleted.status_code == 200 and deleted.json()["data"] == {"a": "2"}
    missing = api.get(f"{path}/life")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    assert api.delete(f"{path}/life").status_code == 404


def test_create_in_a_missing_namespace_is_not_found(api):
    response = api.post("/api/v1/namespaces/nowhere/configmaps",
                        json={"metadata": {"name": "x"}})
    assert response.status_code == 404
    assert response.json()["message"] == 'namespaces "nowhere" not found'


def test_patch_types(api):
    path = "/api/v1/namespaces/default/configmaps/patched"
    created(api.post("/api/v1/namespaces/default/configmaps",
                     json={"metadata": {"name": "patched", "labels": {"keep": "1", "drop": "1"}},
                           "data": {"a": "1"}}))

    def patch(content_type: str, body) -> dict:
        response = api.patch(path, content=json.dumps(body),
                             headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        return response.json()

    merged = patch("application/merge-patch+json",
                   {"metadata": {"labels": {"drop": None}}, "data": {"b": "2"}})
    assert merged["metadata"]["labels"] == {"keep": "1"}
    assert merged["data"] == {"a": "1", "b": "2"}
    strategic = patch("application/strategic-merge-patch+json",
                      {"data": {"a": None}, "$setElementOrder/x": []})
    assert strategic["data"] == {"b": "2"}
    jsonpatched = patch("application/json-patch+json",
                        [{"op": "add", "path": "/data/c", "value": "3"},
                         {"op": "replace", "path": "/metadata/labels/keep", "value": "2"},
                         {"op": "test", "path": "/data/b", "value": "2"}])
    assert jsonpatched["data"] == {"b": "2", "c": "3"}
    assert jsonpatched["metadata"]["labels"] == {"keep": "2"}
    failed = api.patch(path, content=json.dumps([{"op": "test", "path": "/data/b", "value": "9"}]),
                       headers={"Content-Type": "application/json-patch+json"})
    assert failed.status_code == 422
    stale = api.patch(path, content=json.dumps({"metadata": {"resourceVersion": "1"}}),
                      headers={"Content-Type": "application/merge-patch+json"})
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"


def test_pods_selectors_cluster_wide_lists_and_eviction(api):
    api.post("/api/v1/namespaces", json={"metadata": {"name": "apps"}})
    for namespace, name, node_name in (("default", "web-1", "n1"), ("apps", "web-2", "n2"),
                                       ("apps", "db-1", "n1")):
        pod_obj = created(api.post(f"/api/v1/namespaces/{namespace}/pods",
                                   json=pod(name, node_name)))
        assert pod_obj["status"] == {"phase": "Pending"}

    def names(path: str, **params) -> list[str]:
        body = api.get(path, params=params).json()
        assert body["kind"] == "PodList" and int(body["metadata"]["resourceVersion"]) > 0
        return sorted(p["metadata"]["name"] for p in body["items"])

    assert names("/api/v1/pods") == ["db-1", "web-1", "web-2"]
    assert names("/api/v1/namespaces/apps/pods") == ["db-1", "web-2"]
    assert names("/api/v1/pods", fieldSelector="spec.nodeName=n1") == ["db-1", "web-1"]
    assert names("/api/v1/pods", labelSelector="app=web") == ["web-1", "web-2"]
    assert names("/api/v1/pods", labelSelector="app in (db, cache)") == ["db-1"]
    assert names("/api/v1/pods", labelSelector="app notin (db),app") == ["web-1", "web-2"]
    assert names("/api/v1/pods", fieldSelector="metadata.namespace=apps,metadata.name!=db-1") == [
        "web-2"]

    eviction = api.post("/api/v1/namespaces/apps/pods/web-2/eviction",
                        json={"apiVersion": "policy/v1", "kind": "Eviction",
                              "metadata": {"name": "web-2", "namespace": "apps"}})
    assert eviction.status_code == 201 and eviction.json()["status"] == "Success"
    assert api.get("/api/v1/namespaces/apps/pods/web-2").status_code == 404


def test_status_subresource_is_separate(api):
    created(api.post("/api/v1/nodes", json=node("sub", ready=False)))
    spec_only = api.patch("/api/v1/nodes/sub", content=json.dumps(
        {"spec": {"unschedulable": True}, "status": {"phase": "ignored"}}),
        headers={"Content-Type": "application/merge-patch+json"}).json()
    assert spec_only["spec"] == {"unschedulable": True} and "phase" not in spec_only["status"]
    status = api.get("/api/v1/nodes/sub/status").json()
    status["status"]["conditions"][0]["status"] = "True"
    status["spec"] = {}
    after = api.put("/api/v1/nodes/sub/status", json=status).json()
    assert after["status"]["conditions"][0]["status"] == "True"
    assert after["spec"] == {"unschedulable": True}


def test_watch_is_refused_cleanly(api):
    response = api.get("/api/v1/nodes", params={"watch": "true"})
    assert response.status_code == 405 and response.json()["reason"] == "MethodNotAllowed"


def test_tables(api):
    created(api.post("/api/v1/nodes", json=node("table-node")))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    body = api.get("/api/v1/nodes/table-node", headers={"Accept": accept}).json()
    assert body["kind"] == "Table"
    assert [c["name"] for c in body["columnDefinitions"]] == [
        "Name", "Status", "Roles", "Age", "Version"]
    [row] = body["rows"]
    assert row["cells"][:3] == ["table-node", "Ready", "control-plane"]
    assert row["cells"][4] == "v1.30.0"
    assert row["object"]["kind"] == "PartialObjectMetadata"
    listed = api.get("/api/v1/pods", params={"includeObject": "Object"},
                     headers={"Accept": accept}).json()
    assert all(r["object"]["kind"] == "Pod" for r in listed["rows"])


# --- the official Python client --------------------------------------------------------


def test_official_python_client(kubeconfig):
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    core, coordination = kubernetes.client.CoreV1Api(client), kubernetes.client.CoordinationV1Api(client)
    core.create_node(node("py-node"))
    names = [n.metadata.name for n in core.list_node().items]
    assert "py-node" in names
    patched = core.patch_node("py-node", {"metadata": {"labels": {"zone": "a"}}})
    assert patched.metadata.labels["zone"] == "a"
    cm = core.create_namespaced_config_map("kube-system", kubernetes.client.V1ConfigMap(
        metadata=kubernetes.client.V1ObjectMeta(name="py-cm"), data={"k": "v"}))
    assert cm.metadata.namespace == "kube-system"
    lease = coordination.create_namespaced_lease("kube-node-lease", kubernetes.client.V1Lease(
        metadata=kubernetes.client.V1ObjectMeta(name="py-node"),
        spec=kubernetes.client.V1LeaseSpec(holder_identity="py-node",
                                           lease_duration_seconds=40)))
    lease.spec.holder_identity = "other"
    replaced = coordination.replace_namespaced_lease("py-node", "kube-node-lease", lease)
    assert replaced.spec.holder_identity == "other"
    with pytest.raises(kubernetes.client.ApiException) as stale:
        coordination.replace_namespaced_lease("py-node", "kube-node-lease", lease)
    assert stale.value.status == 409
    assert [item.metadata.name for item in coordination.list_namespaced_lease(
        "kube-node-lease").items] == ["py-node"]
    client.close()


# --- the real kubectl ------------------------------------------------------------------


def test_kubectl(kubeconfig, api, tmp_path):
    def run(*args: str) -> str:
        return kubectl(kubeconfig, f"--cache-dir={tmp_path / 'cache'}", *args)

    created(api.post("/api/v1/nodes", json=node("kubectl-node")))
    created(api.post("/api/v1/nodes", json=node("kubectl-worker", ready=False, role=None)))
    lines = run("get", "nodes").splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["kubectl-node"][1:3] == ["Ready", "control-plane"]
    assert rows["kubectl-node"][4] == "v1.30.0"
    assert rows["kubectl-worker"][1:3] == ["NotReady", "<none>"]

    assert run("cordon", "kubectl-node") == "node/kubectl-node cordoned\n"
    assert "Ready,SchedulingDisabled" in run("get", "node", "kubectl-node")
    assert run("label", "node", "kubectl-node", "tier=gold") == "node/kubectl-node labeled\n"
    assert run("get", "node", "kubectl-node", "-o", "jsonpath={.metadata.labels.tier}") == "gold"

    manifest = tmp_path / "cm.yaml"
    for value, verb in (("1", "created"), ("2", "configured")):
        manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n"
                            f"  namespace: kube-system\ndata:\n  key: \"{value}\"\n")
        assert run("apply", "-f", str(manifest)) == f"configmap/applied {verb}\n"
    assert run("get", "cm", "-n", "kube-system", "applied", "-o",
               "jsonpath={.data.key}") == "2"
    assert "applied" in run("get", "cm", "-n", "kube-system")

    assert run("create", "namespace", "kubectl-ns") == "namespace/kubectl-ns created\n"
    assert "kubectl-ns" in run("get", "ns")
    created(api.post("/api/v1/namespaces/kubectl-ns/pods", json=pod("kubectl-pod", "n1")))
    pods = [line.split() for line in run("get", "pods", "-A").splitlines()]
    assert pods[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert ["kubectl-ns", "kubectl-pod", "0/1", "Pending", "0"] in [p[:5] for p in pods]
    created(api.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                     json={"metadata": {"name": "kubectl-node"},
                           "spec": {"holderIdentity": "kubectl-node"}}))
    assert "kubectl-node" in run("get", "lease", "-A")
    created(api.post("/apis/apps/v1/namespaces/kube-system/daemonsets",
                     json={"metadata": {"name": "kube-proxy"}, "spec": {}}))
    assert "kube-proxy" in run("get", "ds", "-A")
    assert run("get", "ds", "-n", "kube-system", "kube-proxy", "-o", "name") == (
        "daemonset.apps/kube-proxy\n")


# --- etcd outages and several apiservers -----------------------------------------------


def wait_for_readyz(client: httpx.Client, code: int, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == code or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_readyz_follows_etcd_and_two_apiservers_share_it(tmp_path):
    certs = make_cluster_certs(tmp_path)
    with (etcd_cluster(tmp_path / "etcd") as etcd,
          apiserver(tmp_path, certs, etcd) as first,
          apiserver(tmp_path, certs, etcd) as second,
          httpx.Client(base_url=first.url, verify=admin_context(certs), timeout=5) as one,
          httpx.Client(base_url=second.url, verify=admin_context(certs), timeout=5) as two):
        created(one.post("/api/v1/nodes", json=node("shared")))
        assert two.get("/api/v1/nodes/shared").json()["metadata"]["name"] == "shared"
        seen = two.get("/api/v1/namespaces").json()["items"]
        assert {n["metadata"]["name"] for n in seen} == {
            "default", "kube-system", "kube-public", "kube-node-lease"}

        etcd.stop(0)
        down = wait_for_readyz(one, 500)
        assert down.status_code == 500 and "etcd" in down.text
        unavailable = one.get("/api/v1/nodes/shared")
        assert unavailable.status_code == 503 and unavailable.json()["kind"] == "Status"
        assert one.get("/livez").status_code == 200

        etcd.start(0)
        assert wait_for_readyz(one, 200).text == "ok"
        assert one.get("/api/v1/nodes/shared").status_code == 200
    for server in (first, second):
        assert "Traceback" not in server.log.read_text()
