"""API objects a real cluster carries and that operations must keep right.

kubeadm's ConfigMaps name the control-plane endpoint (runbook 000 forgets them); workload
pods on the workers let tests prove that no operation deletes or evicts a pod.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from io import StringIO

from ruamel.yaml import YAML

from kubeha.model import Cluster, Layout

WORKLOADS_PER_WORKER = 2


def _yaml(data: dict) -> str:
    out = StringIO()
    YAML().dump(data, out)
    return out.getvalue()


def _configmap(namespace: str, name: str, data: dict[str, str]) -> tuple[str, dict]:
    return (f"/api/v1/namespaces/{namespace}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": name, "namespace": namespace}, "data": data})


def _endpoint_kubeconfig(cluster: Cluster, ca_pem: bytes, user: dict) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default", "cluster": {
            "server": cluster.endpoint,
            "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "current-context": "default",
        "users": [{"name": "default", "user": user}],
    }


def cluster_objects(cluster: Cluster, ca_pem: bytes) -> Iterator[tuple[str, dict]]:
    """(collection path, object) pairs to create once the API serves."""
    if cluster.layout is Layout.KUBEADM:
        endpoint = cluster.endpoint.removeprefix("https://")
        yield _configmap("kube-system", "kubeadm-config", {"ClusterConfiguration": _yaml({
            "apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration",
            "clusterName": cluster.name, "controlPlaneEndpoint": endpoint,
            "kubernetesVersion": cluster.kubernetes_version,
            "networking": {"dnsDomain": cluster.cluster_domain,
                           "serviceSubnet": str(cluster.service_cidr)},
            "etcd": {"local": {"dataDir": str(cluster.paths.etcd_data_dir)}},
        })})
        yield _configmap("kube-public", "cluster-info", {
            "kubeconfig": _yaml(_endpoint_kubeconfig(cluster, ca_pem, {}))})
        token = {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
        yield _configmap("kube-system", "kube-proxy", {
            "config.conf": _yaml({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                  "kind": "KubeProxyConfiguration",
                                  "clientConnection": {"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf"}}),
            "kubeconfig.conf": _yaml(_endpoint_kubeconfig(cluster, ca_pem, token)),
        })
    # calico on the etcd datastore (as kubeasz installs it): calico-node reads the endpoints here
    yield _configmap("kube-system", "calico-config", {
        "etcd_endpoints": ",".join(cluster.etcd_client_urls()), "calico_backend": "bird"})
    # a monitoring stack scraping etcd on the masters, its targets given by hand (as
    # kube-prometheus-stack's kubeEtcd.endpoints): what a migration must report, not change
    yield ("/api/v1/namespaces/kube-system/endpoints", {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "monitoring-kube-etcd", "namespace": "kube-system"},
        "subsets": [{"addresses": [{"ip": str(h.address)} for h in cluster.etcd_members],
                     "ports": [{"name": "http-metrics", "port": 2381, "protocol": "TCP"}]}],
    })
    for worker in cluster.workers:
        for i in range(1, WORKLOADS_PER_WORKER + 1):
            yield ("/api/v1/namespaces/default/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"web-{worker.name}-{i}", "namespace": "default",
                             "labels": {"app": "web"}},
                "spec": {"nodeName": worker.name,
                         "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.9"}]},
            })
