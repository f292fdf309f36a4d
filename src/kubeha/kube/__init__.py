"""kube-apiserver access: the official ``kubernetes`` client, configured from a kubeconfig's
credentials, and the few reads kubeha needs (nodes, version)."""

from kubeha.kube.client import (
    NODE_LEASE_NAMESPACE, KubeError, NodeInfo, api_client, configmap_value, delete_node, lease_renewed, list_nodes,
    names_an_address, node_ready, objects_naming, patch_node, read_node, restart_daemonset, server_version,
    set_configmap_value,
)
from kubeha.kube.kubeconfig import KubeconfigCredentials, kubeconfig_credentials

__all__ = [
    "KubeError", "KubeconfigCredentials", "NodeInfo", "api_client", "kubeconfig_credentials",
    "NODE_LEASE_NAMESPACE", "configmap_value", "delete_node", "lease_renewed", "list_nodes", "names_an_address",
    "node_ready", "objects_naming", "patch_node",
    "read_node", "restart_daemonset",
    "server_version", "set_configmap_value",
]
