"""Control-plane manifests and units, and the kubelet, in both layouts.

The etcd flags are started for real (etcd in a private network and mount namespace, the
layout's paths on an overlay) and the units are checked by ``systemd-analyze verify``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from helpers.render_clusters import cluster, make_cluster, run, run_in_namespaces  # noqa: F401

from kubeha import pki
from kubeha.errors import InputError
from kubeha.model import Cluster, Host, Layout
from kubeha.render import (
    RenderedFile,
    apiserver_flags,
    controller_manager_flags,
    etcd_flags,
    kubelet_node_flags,
    render_control_plane,
    render_haproxy_cfg,
    render_keepalived_conf,
    render_kubelet,
    render_node_proxy_conf,
    scheduler_flags,
)

COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]


def _exec_start(unit: str) -> list[str]:
    """The words of a unit's last ExecStart, continuation lines joined."""
    lines = unit.replace("\\\n", " ").splitlines()
    return shlex.split([line for line in lines if line.startswith("ExecStart=")][-1].removeprefix("ExecStart="))


def _command(file: RenderedFile) -> list[str]:
    if file.path.suffix == ".yaml":
        return yaml.safe_load(file.content)["spec"]["containers"][0]["command"]
    return _exec_start(file.content)


def _expected_flags(cluster: Cluster, host: Host) -> dict[str, dict[str, str]]:
    return {
        "etcd": etcd_flags(cluster, host),
        "kube-apiserver": apiserver_flags(cluster, host),
        "kube-controller-manager": controller_manager_flags(cluster),
        "kube-scheduler": scheduler_flags(cluster),
    }


def test_control_plane_files_carry_exactly_their_components_flags(cluster: Cluster) -> None:
    for master in cluster.masters:
        files = render_control_plane(cluster, master)
        directory = cluster.paths.manifests_dir or cluster.paths.units_dir
        suffix = ".yaml" if cluster.layout is Layout.KUBEADM else ".service"
        assert [f.path for f in files] == [directory / f"{name}{suffix}" for name in COMPONENTS]
        for file, (name, flags) in zip(files, _expected_flags(cluster, master).items()):
            command = _command(file)
            binary = name if cluster.layout is Layout.KUBEADM else f"/usr/{'' if name == 'etcd' else 'local/'}bin/{name}"
            assert command[0] == binary
            assert command[1:] == [f"--{k}={flags[k]}" for k in sorted(flags)]


@pytest.mark.parametrize("masters", [3, 1])
def test_manifests_are_kube_system_static_pods(masters: int) -> None:
    cluster = make_cluster(masters, Layout.KUBEADM)
    for file in render_control_plane(cluster, cluster.masters[0]):
        pod = yaml.safe_load(file.content)
        assert (pod["apiVersion"], pod["kind"], file.mode) == ("v1", "Pod", 0o600)
        assert pod["metadata"]["namespace"] == "kube-system"
        assert pod["metadata"]["name"] == file.path.stem == pod["metadata"]["labels"]["component"]
        spec = pod["spec"]
        assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts == {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}


def test_apiserver_etcd_servers_follow_the_layout() -> None:
    kubeadm, kubeasz = make_cluster(3, Layout.KUBEADM), make_cluster(3, Layout.KUBEASZ)
    m1 = kubeadm.host("m1")
    assert apiserver_flags(kubeadm, m1)["etcd-servers"] == "https://127.0.0.1:2379"  # stacked: local member
    assert "bind-address" not in apiserver_flags(kubeadm, m1)
    assert apiserver_flags(kubeasz, m1)["etcd-servers"] == ",".join(kubeasz.etcd_client_urls())
    assert apiserver_flags(kubeasz, m1)["bind-address"] == "10.77.0.11"


def test_transitional_member_lists_are_parameters() -> None:
    c = make_cluster(3, Layout.KUBEASZ)
    m3 = c.host("m3")
    joining = "m1=https://10.77.0.11:2380,m3=https://10.77.0.13:2380"
    files = render_control_plane(c, m3, initial_cluster_state="existing", initial_cluster=joining,
                                 etcd_servers=["https://10.77.0.11:2379"])
    assert "--initial-cluster-state=existing" in _command(files[0])
    assert f"--initial-cluster={joining}" in _command(files[0])
    assert "--etcd-servers=https://10.77.0.11:2379" in _command(files[1])
    with pytest.raises(InputError, match="neither new nor existing"):
        etcd_flags(c, m3, initial_cluster_state="joining")


def test_etcd_flags_are_flags_of_the_installed_etcd(cluster: Cluster) -> None:
    known = set(re.findall(r"--([a-z0-9-]+)", run("etcd", "--help").stdout + run("etcd", "--help").stderr))
    assert set(etcd_flags(cluster, cluster.masters[0])) <= known


def _stage_etcd_pki(cluster: Cluster, host: Host, stage: Path) -> None:
    """The layout's etcd CA and certs under ``stage`` (mirroring the absolute paths)."""
    ca = pki.new_ca("etcd-ca")
    sans = pki.SubjectAltNames(dns_names=(host.name,), ip_addresses=(IPv4Address("127.0.0.1"), host.address))
    p = cluster.paths
    files = {p.etcd_ca.cert: ca.cert_pem}
    for pair in (p.etcd_server, p.etcd_peer, p.etcd_client):  # kubeasz: one pair for all three
        cert = pki.issue(ca, host.name, sans=sans, server=True, client=True)
        files |= {pair.cert: cert.cert_pem, pair.key: cert.key_pem}
    for path, data in files.items():
        target = stage / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@pytest.mark.parametrize("layout", list(Layout))
def test_rendered_etcd_starts_and_serves_tls(layout: Layout, tmp_path: Path) -> None:
    c = make_cluster(1, layout)
    m1 = c.host("m1")
    _stage_etcd_pki(c, m1, tmp_path / "stage")
    p = c.paths
    curl = f"curl -sf --max-time 2 --cacert {p.etcd_ca.cert} --cert {p.etcd_client.cert} --key {p.etcd_client.key}"
    script = f"""
ip link set lo up
ip link add eth0 type veth peer name eth0-peer
ip addr add {m1.address}/24 dev eth0
ip link set eth0-peer up
ip link set eth0 up
mkdir {tmp_path}/overlay
mount -t tmpfs tmpfs {tmp_path}/overlay
mkdir {tmp_path}/overlay/upper {tmp_path}/overlay/work
mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/overlay/upper,workdir={tmp_path}/overlay/work /etc
cp -a {tmp_path}/stage/etc/kubernetes /etc/
mount -t tmpfs tmpfs {p.etcd_data_dir}
{shlex.join(_command(render_control_plane(c, m1)[0]))} >{tmp_path}/etcd.log 2>&1 &
trap 'kill $!' EXIT
for i in $(seq 100); do {curl} https://127.0.0.1:2379/health && break; sleep 0.1; done
echo
{curl} https://{m1.address}:2379/health
echo
curl -sf --max-time 2 http://127.0.0.1:2381/health
"""
    result = run_in_namespaces(script, net=True)
    log = (tmp_path / "etcd.log").read_text()
    assert result.returncode == 0, result.stderr + log
    assert result.stdout.count('"health":"true"') == 3, result.stdout + log


def _write_units(files: list[RenderedFile], units_dir: Path, target: Path) -> None:
    for file in files:
        if file.path.is_relative_to(units_dir):
            path = target / file.path.relative_to(units_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file.content)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    kubeasz, kubeadm = make_cluster(3, Layout.KUBEASZ), make_cluster(3, Layout.KUBEADM)
    kubeasz_files = render_control_plane(kubeasz, kubeasz.host("m1")) + render_kubelet(kubeasz, kubeasz.host("w1"))
    _write_units(kubeasz_files, kubeasz.paths.units_dir, tmp_path / "kubeasz")
    _write_units(render_kubelet(kubeadm, kubeadm.host("m1")), kubeadm.paths.units_dir, tmp_path / "kubeadm")
    assert len(list(tmp_path.glob("*/*.service"))) == 6
    assert (tmp_path / "kubeadm/kubelet.service.d/10-kubeadm.conf").exists()
    stubs = " ".join(f"/usr/local/bin/{b}" for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"))
    result = run_in_namespaces(
        "mount -t tmpfs tmpfs /usr/local/bin\n"  # the stand-ins' place, stubbed for ExecStart checks
        f"for b in {stubs}; do printf '#!/bin/sh\\n' >$b; chmod +x $b; done\n"
        f"cd {tmp_path}/kubeasz\nsystemd-analyze verify --man=no ./*.service\n"
        f"cd {tmp_path}/kubeadm\nsystemd-analyze verify --man=no ./kubelet.service\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def _kubelet_argv(files: list[RenderedFile]) -> list[str]:
    """The kubelet's argv as systemd builds it from the unit, drop-in and environment file."""
    text = "\n".join(f.content for f in files if f.path.suffix in (".service", ".conf", ".env"))
    env = dict(re.findall(r'^(?:Environment=")?(KUBELET_\w+)="?([^"\n]*)"?$', text, re.MULTILINE))
    words = _exec_start(text)
    return [w for word in words for w in (env[word[1:]].split() if word.startswith("$") else [word])]


def test_kubelet_runs_as_its_node(cluster: Cluster) -> None:
    p = cluster.paths
    for host in cluster.hosts:
        files = render_kubelet(cluster, host)
        argv = _kubelet_argv(files)
        assert argv[0] == "/usr/local/bin/kubelet"
        expected = {f"--{k}={v}" for k, v in kubelet_node_flags(cluster, host).items()}
        expected |= {f"--kubeconfig={p.kubelet_kubeconfig}", "--config=/var/lib/kubelet/config.yaml",
                     f"--node-ip={host.address}", f"--hostname-override={host.name}"}
        assert expected <= set(argv)
        master = host in cluster.masters
        assert ("--node-labels=node-role.kubernetes.io/control-plane=" in argv) == master
        assert ("--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule" in argv) == master
        config = yaml.safe_load(next(f for f in files if f.path.name == "config.yaml").content)
        assert config["kind"] == "KubeletConfiguration"
        assert config["authentication"]["x509"]["clientCAFile"] == str(p.ca.cert)
        assert config.get("staticPodPath") == (str(p.manifests_dir) if master and p.manifests_dir else None)


def test_a_worker_runs_no_control_plane(cluster: Cluster) -> None:
    assert render_control_plane(cluster, cluster.host("w1")) == []


def _render_everything(cluster: Cluster) -> list[object]:
    lb = cluster.lb_hosts[0]
    return [
        render_haproxy_cfg(cluster),
        render_keepalived_conf(cluster, lb, 150, unicast=True),
        render_node_proxy_conf(cluster),
        *(render_control_plane(cluster, h) + render_kubelet(cluster, h) for h in cluster.hosts),
    ]


def _digest_of_everything(masters: int, layout: str) -> str:
    return hashlib.sha256(repr(_render_everything(make_cluster(masters, Layout(layout)))).encode()).hexdigest()


def test_rendering_is_deterministic(cluster: Cluster) -> None:
    """The same model renders the same text, in this process and in others whose string
    hashes (and so set orders) differ."""
    assert _render_everything(cluster) == _render_everything(Cluster.model_validate(cluster.model_dump()))
    masters, layout = len(cluster.masters), cluster.layout.value
    code = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]; "
            "import test_render_controlplane as t; "
            f"print(t._digest_of_everything({masters}, {layout!r}))")
    digests = {
        run(sys.executable, "-c", code, env=os.environ | {"PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")
    }
    assert digests == {_digest_of_everything(masters, layout)}
