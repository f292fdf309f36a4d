"""Import a kubespray inventory (inventory.ini or hosts.yaml, plus group_vars) as an Inventory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeha.inventory.ansible import DocumentDraft, parse_ansible_inventory
from kubeha.inventory.inventory import Inventory
from kubeha.model import Layout, Role

# Older kubespray releases name the control plane group kube-master (kube_master once normalised).
_ROLE_GROUPS = (
    (("kube_control_plane", "kube_master"), Role.MASTER),
    (("etcd",), Role.ETCD),
    (("kube_node",), Role.WORKER),
)
# kubespray's own defaults (roles/kubespray-defaults) for what the cluster depends on.
KUBESPRAY_DEFAULTS: dict[str, Any] = {
    "cluster_name": "cluster.local",
    "dns_domain": "cluster.local",
    "kube_service_addresses": "10.233.0.0/18",
    "kube_apiserver_port": 6443,
    "kube_cert_dir": "/etc/kubernetes/ssl",
    "loadbalancer_apiserver_port": 6443,
    "loadbalancer_apiserver_type": "nginx",
    "etcd_deployment_type": "host",
}


def import_kubespray(
    text: str,
    source: str = "inventory.ini",
    group_vars: Mapping[str, Any] | None = None,
    group_vars_source: str = "group_vars",
) -> Inventory:
    """The cluster a kubespray inventory describes; layout kubeadm.

    ``group_vars``: the variables of group_vars/all and group_vars/k8s_cluster, merged; they
    override the inventory's own [all:vars] and [k8s_cluster:vars].
    """
    draft = DocumentDraft.start(parse_ansible_inventory(text, source), ["all", "k8s_cluster"],
                                defaults=KUBESPRAY_DEFAULTS, extra=group_vars, extra_source=group_vars_source)
    variables = draft.variables
    draft.set("layout", Layout.KUBEADM.value, source)
    draft.add_hosts(_ROLE_GROUPS)
    draft.set_ssh_defaults()
    draft.use("name", "cluster_name")
    draft.use("cluster_domain", "dns_domain")
    draft.use("service_cidr", "kube_service_addresses")
    draft.use("apiserver_port", "kube_apiserver_port")
    draft.use("kubernetes_version", "kube_version", lambda v: str(v) if str(v).startswith("v") else f"v{v}")
    # the certificates live in kube_cert_dir; /etc/kubernetes/pki is only a link to it
    draft.use("paths", "kube_cert_dir", lambda directory: {"pki_dir": directory})
    if variables["etcd_deployment_type"] != "kubeadm":
        draft.notes.append(
            f"{draft.var_places['etcd_deployment_type']}: etcd_deployment_type "
            f"{variables['etcd_deployment_type']}: the etcd certificates are in /etc/ssl/etcd/ssl "
            "with per-host names, not where kubeha's kubeadm paths say: set paths.etcd_* before "
            "any etcd operation")
    _load_balancers(draft)
    return draft.build()


def _load_balancers(draft: DocumentDraft) -> None:
    """The external load balancer (kubeha's VIP) and the node-local proxy on the workers."""
    variables, places = draft.variables, draft.var_places
    external = variables.get("loadbalancer_apiserver")
    if external is not None:
        if isinstance(external, Mapping):  # kubespray's port default: the apiserver's
            external = {"port": variables["kube_apiserver_port"], **external}
        draft.set("vip", external, places["loadbalancer_apiserver"])
        draft.notes.append(
            f"{places['loadbalancer_apiserver']}: kubespray does not run this external load "
            "balancer; kubeha manages it as haproxy + keepalived on the masters (interface and "
            "virtual_router_id: kubeha's defaults)")
    if "apiserver_loadbalancer_domain_name" in variables:
        draft.notes.append(
            f"{places['apiserver_loadbalancer_domain_name']}: kubeha addresses the endpoint by the "
            f"VIP, not by {variables['apiserver_loadbalancer_domain_name']}")
    localhost = variables.get("loadbalancer_apiserver_localhost", external is None)
    lb = {"node_local_proxy": localhost, "node_local_proxy_port": variables["loadbalancer_apiserver_port"]}
    draft.set("load_balancer", lb, places.get("loadbalancer_apiserver_localhost",
                                               places["loadbalancer_apiserver_port"]))
    if variables["loadbalancer_apiserver_type"] != "nginx":
        draft.notes.append(
            f"{places['loadbalancer_apiserver_type']}: the node-local proxy is "
            f"{variables['loadbalancer_apiserver_type']}; kubeha renders it as nginx")
