"""calico with the etcd datastore: where it keeps the etcd endpoints, and repointing them.

calico-node reads ``etcd_endpoints`` from the ``kube-system/calico-config`` ConfigMap when
it starts (so its DaemonSet is rolled after a change); calicoctl reads
``/etc/calico/calicoctl.cfg`` on the hosts. A cluster with calico on the Kubernetes
datastore has neither, and nothing is done.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

from kubeha.access import ClusterAccess
from kubeha.kube import configmap_value, restart_daemonset, set_configmap_value
from kubeha.plan import StepContext, StepKind, StepNotVerified

NAMESPACE, CONFIGMAP, KEY, DAEMONSET = "kube-system", "calico-config", "etcd_endpoints", "calico-node"
CALICOCTL_CFG = PurePosixPath("/etc/calico/calicoctl.cfg")
_ENDPOINTS_LINE = re.compile(r"^(\s*etcdEndpoints:\s*)(\"?)([^\"\n]*)(\"?)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class CalicoEtcdConfig:
    configmap: tuple[str, ...] | None = None  # calico-config's etcd_endpoints
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # host -> calicoctl.cfg's etcdEndpoints

    @property
    def endpoints(self) -> tuple[str, ...] | None:
        """The endpoints calico uses (the ConfigMap's, else a calicoctl.cfg's); None: no etcd datastore."""
        return self.configmap or next(iter(self.files.values()), None)


def _split(value: str) -> tuple[str, ...]:
    return tuple(url.strip() for url in value.split(",") if url.strip())


def calicoctl_endpoints(text: str) -> tuple[str, ...] | None:
    match = _ENDPOINTS_LINE.search(text)
    return _split(match[3]) if match else None


def with_calicoctl_endpoints(text: str, endpoints: Sequence[str]) -> str:
    return _ENDPOINTS_LINE.sub(lambda m: f"{m[1]}{m[2]}{','.join(endpoints)}{m[4]}", text, count=1)


def read_calico_config(access: ClusterAccess) -> CalicoEtcdConfig:
    value = configmap_value(access.kube(), NAMESPACE, CONFIGMAP, KEY)
    files = {}
    for host in access.connected:
        text = access.get_file(host, CALICOCTL_CFG)
        endpoints = calicoctl_endpoints(text.decode()) if text is not None else None
        if endpoints:
            files[host.name] = endpoints
    return CalicoEtcdConfig(_split(value) if value else None, files)


class RepointCalico(StepKind):
    """Arguments: ``etcd_servers`` (the new list), ``accepted`` (lists that count as done),
    ``previous`` (the list before), ``configmap`` (whether calico-config has them),
    ``hosts`` (with a calicoctl.cfg)."""

    name = "calico-etcd-endpoints"

    def _accepted(self, ctx: StepContext) -> list[tuple[str, ...]]:
        lists = ctx.step.arguments.get("accepted") or [ctx.step.arguments["etcd_servers"]]
        return [tuple(str(u) for u in endpoints) for endpoints in lists]  # type: ignore[union-attr]

    def is_done(self, ctx: StepContext) -> bool:
        accepted = self._accepted(ctx)
        config = read_calico_config(ctx.cluster)
        if ctx.step.arguments.get("configmap") and config.configmap not in accepted:
            return False
        return all(config.files.get(str(h)) in accepted for h in ctx.step.arguments.get("hosts") or [])  # type: ignore[union-attr]

    def apply(self, ctx: StepContext) -> None:
        access: ClusterAccess = ctx.cluster
        endpoints = [str(u) for u in ctx.step.arguments["etcd_servers"]]  # type: ignore[union-attr]
        for name in ctx.step.arguments.get("hosts") or []:  # type: ignore[union-attr]
            text = access.get_file(str(name), CALICOCTL_CFG)
            if text is not None:
                access.put_file(str(name), CALICOCTL_CFG, with_calicoctl_endpoints(text.decode(), endpoints).encode(),
                                backup=ctx.step_backup_set)
                ctx.took_backup(str(name), ctx.step_backup_set)
        if ctx.step.arguments.get("configmap"):
            api = access.kube()
            set_configmap_value(api, NAMESPACE, CONFIGMAP, KEY, ",".join(endpoints))
            restart_daemonset(api, NAMESPACE, DAEMONSET, datetime.now(timezone.utc).isoformat())

    def verify(self, ctx: StepContext) -> None:
        if not self.is_done(ctx):
            raise StepNotVerified("calico's etcd endpoints are not the new members yet")

    def rollback(self, ctx: StepContext) -> None:
        access: ClusterAccess = ctx.cluster
        for name in ctx.step.arguments.get("hosts") or []:  # type: ignore[union-attr]
            access.restore(str(name), ctx.step_backup_set)
        previous = ctx.step.arguments.get("previous")
        if ctx.step.arguments.get("configmap") and previous:
            api = access.kube()
            set_configmap_value(api, NAMESPACE, CONFIGMAP, KEY, ",".join(str(u) for u in previous))  # type: ignore[union-attr]
            restart_daemonset(api, NAMESPACE, DAEMONSET, datetime.now(timezone.utc).isoformat())
