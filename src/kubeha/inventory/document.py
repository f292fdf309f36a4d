"""The cluster.yaml document: its schema, and the conversions to and from an Inventory.

Every source (a cluster.yaml, an imported ansible inventory) becomes a plain document
first; ``build_inventory`` validates it, runs the semantic checks and collects every
problem before it builds anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from kubeha.inventory.checks import cluster_problems
from kubeha.inventory.inventory import Inventory, SshDefaults
from kubeha.inventory.problems import Locator, field_path, refusal, validation_problems
from kubeha.model import (
    HOST_NAME_PATTERN, CertPair, Cluster, ClusterPaths, EtcdTopology, Host, Layout, LoadBalancer,
    Role, VirtualIP,
)

CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DOMAIN_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
VERSION_PATTERN = r"^v[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$"
PATTERN_WORDS = {
    HOST_NAME_PATTERN: "a host name: lowercase letters, digits and '-', at most 63, "
                       "starting and ending with a letter or digit",
    CLUSTER_NAME_PATTERN: "a cluster name: letters, digits, '.', '_' and '-', at most 63",
    DOMAIN_PATTERN: "a DNS domain like cluster.local",
    VERSION_PATTERN: "a Kubernetes version like v1.30.0",
}

# Directories whose files move with them when the paths section relocates them.
_ETCD_CERTS = ("etcd_ca", "etcd_server", "etcd_peer", "etcd_client")


def _absolute(path: PurePosixPath) -> PurePosixPath:
    if not path.is_absolute():
        raise ValueError(f"'{path}' is not an absolute path")
    return path


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int):  # pydantic would take 10 for 0.0.0.10
        raise ValueError(f"{value} is not an IPv4 address")
    return value


AbsolutePath = Annotated[PurePosixPath, AfterValidator(_absolute)]
AddressText = Annotated[IPv4Address, BeforeValidator(_not_a_number)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostSsh(_Section):
    user: str | None = Field(default=None, min_length=1)
    port: Port | None = None
    key_file: Path | None = None


class HostEntry(_Section):
    name: str = Field(pattern=HOST_NAME_PATTERN)
    address: AddressText
    roles: list[Role] = []
    node_name: str | None = Field(default=None, min_length=1)
    ssh: HostSsh | None = None


class VipEntry(VirtualIP):
    address: AddressText


class LoadBalancerSection(LoadBalancer):
    model_config = ConfigDict(frozen=False)

    node_local_proxy: bool | None = None


class CertPairEntry(_Section):
    cert: AbsolutePath
    key: AbsolutePath


def _override_type(annotation: Any) -> Any:
    return CertPairEntry | None if annotation is CertPair else AbsolutePath | None


# Any ClusterPaths field, each optional: the ones given replace the layout's defaults.
PathsSection = create_model(  # type: ignore[call-overload]
    "PathsSection",
    __base__=_Section,
    **{name: (_override_type(f.annotation), None) for name, f in ClusterPaths.model_fields.items()},
)


class ClusterDocument(_Section):
    """cluster.yaml; a field left out (or None) takes the model's default. Field order is file order."""

    name: str | None = Field(default=None, pattern=CLUSTER_NAME_PATTERN)
    layout: Layout | None = None
    etcd_topology: EtcdTopology | None = None
    kubernetes_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    network: IPv4Network | None = None
    apiserver_port: Port | None = None
    service_cidr: IPv4Network | None = None
    cluster_domain: str | None = Field(default=None, pattern=DOMAIN_PATTERN)
    vip: VipEntry | None = None
    extra_vips: list[VipEntry] = []
    load_balancer: LoadBalancerSection = LoadBalancerSection()
    paths: PathsSection = PathsSection()  # type: ignore[valid-type]
    ssh: SshDefaults = SshDefaults()
    hosts: list[HostEntry]

    def setting(self, name: str) -> Any:
        """A cluster setting as the Cluster will have it: the document's value, else the default."""
        value = getattr(self, name)
        return Cluster.model_fields[name].default if value is None else value


_CLUSTER_SCALARS = ("name", "layout", "etcd_topology", "kubernetes_version", "network",
                    "apiserver_port", "service_cidr", "cluster_domain")


def build_inventory(
    data: Any, locate: Locator, *, base_dir: Path | None = None, notes: Sequence[str] = ()
) -> Inventory:
    """Validate a document and build its Inventory, or raise one InputError listing every problem.

    Relative key and known_hosts paths are taken from ``base_dir`` when it is given.
    """
    try:
        document = ClusterDocument.model_validate(data)
    except ValidationError as e:
        raise refusal(validation_problems(e, ClusterDocument, PATTERN_WORDS), locate) from None
    problems = cluster_problems(document)
    if problems:
        raise refusal(problems, locate)
    try:
        return _inventory(document, base_dir, notes)
    except ValidationError as e:  # the checks above should leave nothing for the model to refuse
        raise refusal(validation_problems(e, ClusterDocument, PATTERN_WORDS), locate) from None


def cluster_inconsistencies(cluster: Cluster) -> list[str]:
    """What the consistency checks of cluster.yaml say of ``cluster``, one line each (``field:
    problem``): an operation refuses a change whose inventory kubeha would refuse to read."""
    document = ClusterDocument.model_validate(inventory_document(Inventory(cluster=cluster)))
    return [f"{field_path(p.loc)}: {p.message}" for p in cluster_problems(document)]


def _inventory(document: ClusterDocument, base_dir: Path | None, notes: Sequence[str]) -> Inventory:
    def local(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        return base_dir / path if base_dir is not None and not path.is_absolute() else path

    ssh = document.ssh.model_copy(update={"key_file": local(document.ssh.key_file),
                                          "known_hosts": local(document.ssh.known_hosts)})
    hosts = []
    for entry in document.hosts:
        own = entry.ssh or HostSsh()
        hosts.append(Host(
            name=entry.name, address=entry.address, roles=frozenset(entry.roles),
            node_name=entry.node_name,
            ssh_user=own.user or ssh.user, ssh_port=own.port or ssh.port,
            ssh_key=local(own.key_file) or ssh.key_file,
        ))
    lb = document.load_balancer.model_dump(exclude={"node_local_proxy"})
    given = {k: getattr(document, k) for k in _CLUSTER_SCALARS if getattr(document, k) is not None}
    if document.vip is not None:
        given["vip"] = VirtualIP(**document.vip.model_dump())
    if document.load_balancer.node_local_proxy is not None:
        given["node_local_proxy"] = document.load_balancer.node_local_proxy
    cluster = Cluster(
        **given,
        hosts=tuple(hosts),
        extra_vips=tuple(VirtualIP(**v.model_dump()) for v in document.extra_vips),
        load_balancer=LoadBalancer(**lb),
        paths_override=_paths(document.setting("layout"),
                              document.paths.model_dump(exclude_none=True)),
    )
    return Inventory(cluster=cluster, ssh=ssh, notes=tuple(notes))


def _paths(layout: Layout, overrides: Mapping[str, Any]) -> ClusterPaths | None:
    """The layout's paths with ``overrides``: moving pki_dir (etcd_pki_dir) moves the files in it."""
    if not overrides:
        return None
    paths = ClusterPaths.for_layout(layout)
    if "pki_dir" in overrides:
        paths = _moved(paths, ClusterPaths.model_fields, paths.pki_dir, PurePosixPath(overrides["pki_dir"]))
    if "etcd_pki_dir" in overrides:
        paths = _moved(paths, (*_ETCD_CERTS, "etcd_pki_dir"), paths.etcd_pki_dir,
                       PurePosixPath(overrides["etcd_pki_dir"]))
    return ClusterPaths.model_validate({**paths.model_dump(), **overrides})


def _moved(paths: ClusterPaths, fields: Sequence[str], old: PurePosixPath,
           new: PurePosixPath) -> ClusterPaths:
    def move(path: PurePosixPath) -> PurePosixPath:
        return new / path.relative_to(old) if path.is_relative_to(old) else path

    update: dict[str, Any] = {}
    for name in fields:
        value = getattr(paths, name)
        if isinstance(value, CertPair):
            update[name] = CertPair(cert=move(value.cert), key=move(value.key))
        elif isinstance(value, PurePosixPath):
            update[name] = move(value)
    return paths.model_copy(update=update)


def inventory_document(inventory: Inventory) -> dict[str, Any]:
    """The document that builds ``inventory`` again: JSON types, file order, no empty sections."""
    cluster, ssh = inventory.cluster, inventory.ssh
    hosts = []
    for host in cluster.hosts:
        own = HostSsh(
            user=host.ssh_user if host.ssh_user != ssh.user else None,
            port=host.ssh_port if host.ssh_port != ssh.port else None,
            key_file=host.ssh_key if host.ssh_key != ssh.key_file else None,
        )
        hosts.append(HostEntry(
            name=host.name, address=host.address, node_name=host.node_name,
            roles=[role for role in Role if role in host.roles],
            ssh=own if own.model_dump(exclude_none=True) else None,
        ))
    document = ClusterDocument(
        **{k: getattr(cluster, k) for k in _CLUSTER_SCALARS},
        vip=cluster.vip and VipEntry(**cluster.vip.model_dump()),
        extra_vips=[VipEntry(**v.model_dump()) for v in cluster.extra_vips],
        load_balancer=LoadBalancerSection(**cluster.load_balancer.model_dump(),
                                          node_local_proxy=cluster.node_local_proxy),
        paths=PathsSection(**_path_overrides(cluster)),
        ssh=ssh,
        hosts=hosts,
    )
    data = document.model_dump(mode="json", exclude_none=True)
    return {key: value for key, value in data.items() if value not in ({}, [])}


def _path_overrides(cluster: Cluster) -> dict[str, Any]:
    """The fewest overrides that give the cluster's paths: moved directories first."""
    actual = cluster.paths
    overrides: dict[str, Any] = {}
    for directory in ("pki_dir", "etcd_pki_dir"):
        expected = _paths(cluster.layout, overrides) or ClusterPaths.for_layout(cluster.layout)
        if getattr(actual, directory) != getattr(expected, directory):
            overrides[directory] = getattr(actual, directory)
    expected = _paths(cluster.layout, overrides) or ClusterPaths.for_layout(cluster.layout)
    for name in ClusterPaths.model_fields:
        if getattr(actual, name) != getattr(expected, name):
            overrides[name] = getattr(actual, name).model_dump() if isinstance(
                getattr(actual, name), CertPair) else getattr(actual, name)
    return overrides
