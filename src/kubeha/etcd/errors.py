"""The error of the etcd package (its own module so every etcd module can raise it)."""

from kubeha.errors import KubehaError


class EtcdError(KubehaError):
    """etcd could not be reached or refused a request."""
