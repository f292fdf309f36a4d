"""kube-apiserver access: the official ``kubernetes`` client, configured from a kubeconfig's
credentials, and the few reads kubeha needs (nodes, version)."""

from kubeha.kube.client import (
    KubeError, NodeInfo, api_client, configmap_value, list_nodes, restart_daemonset, server_version, set_configmap_value,
)
from kubeha.kube.kubeconfig import KubeconfigCredentials, kubeconfig_credentials

__all__ = [
    "KubeError", "KubeconfigCredentials", "NodeInfo", "api_client", "kubeconfig_credentials",
    "configmap_value", "list_nodes", "restart_daemonset", "server_version", "set_configmap_value",
]
