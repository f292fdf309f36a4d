"""The error of the etcd package (its own module so every etcd module can raise it)."""

from kubeha.errors import KubehaError


class EtcdError(KubehaError):
    """etcd could not be reached or refused a request."""


class EtcdUnanswered(EtcdError):
    """No endpoint answered (all down or unreachable, as against a refusal): a retry may succeed."""
