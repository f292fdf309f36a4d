"""kube-apiserver access: the official ``kubernetes`` client, configured from a kubeconfig's
credentials, and the few reads kubeha needs (nodes, version)."""

from kubeha.kube.client import KubeError, NodeInfo, api_client, list_nodes, server_version
from kubeha.kube.kubeconfig import KubeconfigCredentials, kubeconfig_credentials

__all__ = [
    "KubeError", "KubeconfigCredentials", "NodeInfo", "api_client", "kubeconfig_credentials",
    "list_nodes", "server_version",
]
