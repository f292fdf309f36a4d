"""The host side of an etcd member: which form it runs in, its files, its log, its scripts.

The shell scripts run here for real (``sh``, with a private mount or network namespace
where they look at mounts or processes); the lab tests run them over SSH.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml
from cryptography import x509
from helpers.render_clusters import make_cluster, run, run_in_namespaces

from kubeha.model import Host, Layout, Role
from kubeha.operations import etcd_hosts
from kubeha.operations.etcd_hosts import (
    STATIC_POD, UNIT, last_error_line, member_file, member_files, member_runs_as, parse_log_line,
)
from kubeha.pki.cluster import KEY_MODE, ClusterAuthorities
from kubeha.render import etcd_flags
from kubeha.render.controlplane import render_etcd

SPARE = Host(name="spare1", address="10.77.0.31", roles=frozenset())
ETCD_ONLY = Host(name="e1", address="10.77.0.41", roles=frozenset({Role.ETCD}))
JOINING = "m1=https://10.77.0.11:2380,m2=https://10.77.0.12:2380,spare1=https://10.77.0.31:2380"


def _with(cluster, *hosts):
    return cluster.model_copy(update={"hosts": cluster.hosts + hosts})


def _exec_start(unit: str) -> list[str]:
    lines = unit.replace("\\\n", " ").splitlines()
    return shlex.split([line for line in lines if line.startswith("ExecStart=")][-1].removeprefix("ExecStart="))


# ---- which form ------------------------------------------------------------------------------


def test_only_a_kubeadm_master_runs_etcd_as_a_static_pod() -> None:
    kubeadm = _with(make_cluster(3, Layout.KUBEADM), SPARE, ETCD_ONLY)
    kubeasz = _with(make_cluster(3, Layout.KUBEASZ), SPARE, ETCD_ONLY)
    assert member_runs_as(kubeadm, kubeadm.host("m1")) == STATIC_POD
    assert member_file(kubeadm, kubeadm.host("m1")) == PurePosixPath("/etc/kubernetes/manifests/etcd.yaml")
    for host in ("w1", "spare1", "e1"):  # no kubelet of theirs runs static pods
        assert member_runs_as(kubeadm, kubeadm.host(host)) == UNIT
        assert member_file(kubeadm, kubeadm.host(host)) == PurePosixPath("/etc/systemd/system/etcd.service")
    for host in ("m1", "w1", "spare1", "e1"):
        assert member_runs_as(kubeasz, kubeasz.host(host)) == UNIT
        assert member_file(kubeasz, kubeasz.host(host)) == PurePosixPath("/etc/systemd/system/etcd.service")


# ---- render_etcd as a unit -------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(Layout))
def test_render_etcd_output_is_unchanged_without_as_unit(layout: Layout) -> None:
    c = make_cluster(3, layout)
    m1 = c.host("m1")
    assert render_etcd(c, m1, as_unit=False) == render_etcd(c, m1)
    if layout is Layout.KUBEASZ:  # kubeasz runs units anyway
        assert render_etcd(c, m1, as_unit=True) == render_etcd(c, m1)


def test_kubeadm_etcd_as_a_unit_has_the_kubeadm_paths_and_passes_systemd_analyze(tmp_path: Path) -> None:
    c = _with(make_cluster(3, Layout.KUBEADM), SPARE)
    spare = c.host("spare1")
    unit = render_etcd(c, spare, initial_cluster_state="existing", initial_cluster=JOINING, as_unit=True)
    assert unit.path == member_file(c, spare) and unit.mode == 0o644
    flags = etcd_flags(c, spare, initial_cluster_state="existing", initial_cluster=JOINING)
    assert _exec_start(unit.content) == ["/usr/bin/etcd", *(f"--{k}={flags[k]}" for k in sorted(flags))]
    assert flags["cert-file"] == "/etc/kubernetes/pki/etcd/server.crt"
    assert flags["peer-trusted-ca-file"] == "/etc/kubernetes/pki/etcd/ca.crt"
    assert flags["data-dir"] == "/var/lib/etcd" and flags["name"] == "spare1"
    assert "Type=notify" in unit.content and "WantedBy=multi-user.target" in unit.content
    (tmp_path / "etcd.service").write_text(unit.content)
    result = run("systemd-analyze", "verify", "--man=no", str(tmp_path / "etcd.service"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("layout", list(Layout))
def test_member_files_are_ca_cert_certs_keys_then_the_member_file(layout: Layout) -> None:
    c = _with(make_cluster(3, layout), SPARE)
    auth = ClusterAuthorities.create(layout)
    p = c.paths
    for host, form in ((c.host("m2"), STATIC_POD if layout is Layout.KUBEADM else UNIT), (c.host("spare1"), UNIT)):
        files = member_files(c, host, auth, JOINING)
        paths = list(files)
        assert paths[-1] == member_file(c, host)
        assert p.etcd_ca.cert in paths and p.etcd_ca.key not in paths and p.ca.key not in paths
        assert files[p.etcd_ca.cert][0] == auth.etcd_ca.cert_pem
        expected = {p.etcd_server.key, p.etcd_peer.key, p.etcd_client.key}  # kubeasz: one pair
        assert {path for path, (_, mode) in files.items() if mode == KEY_MODE and path != paths[-1]} == expected
        server = x509.load_pem_x509_certificate(files[p.etcd_server.cert][0])
        sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert str(host.address) in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
        assert server.issuer == auth.etcd_ca.cert.subject
        content = files[paths[-1]][0].decode()
        if form == STATIC_POD:
            command = yaml.safe_load(content)["spec"]["containers"][0]["command"]
        else:
            command = _exec_start(content)
        assert "--initial-cluster-state=existing" in command and f"--initial-cluster={JOINING}" in command
    if layout is Layout.KUBEADM:
        assert p.etcd_client.cert.name == "healthcheck-client.crt"


# ---- the log ---------------------------------------------------------------------------------

ZAP_FATAL = ('{"level":"fatal","ts":"2026-11-23T12:31:56.350Z","caller":"etcdmain/etcd.go:271",'
             '"msg":"discovery failed","error":"cannot access data directory: open /var/lib/etcd/.touch: '
             'read-only file system","stacktrace":"go.etcd.io/etcd/etcdmain.startEtcdOrProxyV2\\n\\t..."}')
CAPNSLOG_FATAL = ("2026-11-23 12:31:53.414111 C | etcdmain: cannot access data directory: "
                  "open /var/lib/etcd/.touch: read-only file system")
RO = "cannot access data directory: open /var/lib/etcd/.touch: read-only file system"


def test_log_lines_of_both_etcd_loggers_parse() -> None:
    assert parse_log_line(ZAP_FATAL) == (3, f"discovery failed: {RO}")
    assert parse_log_line(CAPNSLOG_FATAL) == (3, RO)
    assert parse_log_line("2026-11-23 12:31:53.414010 I | embed: data dir = /var/lib/etcd") == (0, "data dir = /var/lib/etcd")
    assert parse_log_line("2026-11-23 12:31:53.414010 E | rafthttp: failed to dial x") == (2, "failed to dial x")
    assert parse_log_line('{"level":"warn","msg":"slow fdatasync"}') == (1, "slow fdatasync")
    assert parse_log_line("[WARNING] Deprecated '--logger=capnslog' flag is set") is None
    assert parse_log_line("Starting etcd key-value store...") is None


@pytest.mark.parametrize("prefix", [
    "",
    "2026-11-23T12:31:53.413 etcd[4242]: ",  # the lab's journalctl stand-in
    "Nov 23 12:31:53 spare1 etcd[4242]: ",  # journalctl
    "2026-11-23T12:31:53Z ",  # the lab kubelet's pod log
    "2026-11-23T12:31:53.123456789Z stderr F ",  # a real kubelet's CRI log
])
@pytest.mark.parametrize("fatal", [ZAP_FATAL, CAPNSLOG_FATAL])
def test_the_last_fatal_line_is_the_cause_whatever_the_collector(prefix: str, fatal: str) -> None:
    lines = [
        "2026-11-23 12:31:53.413804 I | etcdmain: etcd Version: 3.4.23",
        '{"level":"warn","ts":"x","msg":"failed to start etcd","error":"older"}',
        prefix + fatal,
        "2026-11-23T12:31:53.500 systemd: etcd: Main process exited, code=exited, status=1/FAILURE",
        "2026-11-23T12:31:53.501 systemd: etcd: Failed with result 'exit-code'.",
    ]
    assert last_error_line(lines).endswith(RO)


def test_without_fatal_or_error_the_last_telling_line_is_the_cause() -> None:
    assert last_error_line(["-- No entries --"]) is None
    assert last_error_line([]) is None
    assert last_error_line(["2026-11-23 12:31:53.413804 I | etcdmain: etcd Version: 3.4.23"]) is None
    assert last_error_line([
        "2026-11-23T12:31:53.413 systemd: etcd: Failed to execute /usr/bin/etcd: No such file or directory",
        "2026-11-23 12:31:53.413804 I | etcdmain: etcd Version: 3.4.23",
    ]) == "etcd: Failed to execute /usr/bin/etcd: No such file or directory"
    errors = ["2026-11-23 12:31:53.1 E | rafthttp: first", "2026-11-23 12:31:53.2 W | rafthttp: later warning"]
    assert last_error_line(errors) == "first"
    long = last_error_line(['{"level":"fatal","msg":"' + "x" * 1000 + '"}'])
    assert len(long) == 300 and long.endswith("...")
    assert "\n" not in last_error_line(['{"level":"fatal","msg":"a\\nb"}'])


# ---- the scripts, run here -------------------------------------------------------------------


def _sh(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run("sh", "-c", script, "sh", *args)


def test_data_dir_is_made_0700_and_left_alone_when_right(tmp_path: Path) -> None:
    data = tmp_path / "var/lib/etcd"
    assert _sh(etcd_hosts._DATA_DIR, str(data)).returncode == 0
    assert data.stat().st_mode & 0o7777 == 0o700
    data.chmod(0o755)
    assert _sh(etcd_hosts._DATA_DIR, str(data)).returncode == 0
    assert data.stat().st_mode & 0o7777 == 0o700
    # a read-only data dir already right is not touched: etcd reports it when it starts
    result = run_in_namespaces(f"mount --bind {data} {data}\nmount -o remount,ro,bind {data}\n"
                               f"sh -ec {shlex.quote(etcd_hosts._DATA_DIR)} sh {data}\n")
    assert result.returncode == 0, result.stderr


def test_retiring_moves_the_data_dir_aside_and_never_over_an_earlier_one(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    (data / "member/snap").mkdir(parents=True)
    script = etcd_hosts.retire_script()
    assert _sh(script, str(tmp_path / "missing"), "op1").returncode == 0
    result = _sh(script, str(data), "op1")
    assert result.returncode == 0 and result.stdout.strip() == f"{data}.retired-op1"
    assert not data.exists() and (tmp_path / "etcd.retired-op1/member/snap").is_dir()
    (data / "member").mkdir(parents=True)
    result = _sh(script, str(data), "op1")
    assert result.returncode == 1 and "already exists" in result.stderr
    assert (data / "member").is_dir()


def test_a_data_dir_that_is_a_mount_point_keeps_its_data_on_its_disk(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    (data / "member/wal").mkdir(parents=True)
    result = run_in_namespaces(f"mount --bind {data} {data}\n"
                               f"sh -ec {shlex.quote(etcd_hosts.retire_script())} sh {data} op2\n"
                               f"sh -ec {shlex.quote(etcd_hosts.retire_script())} sh {data} op3\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"{data}/member.retired-op2"]  # op3: nothing left to retire
    assert sorted(p.name for p in data.iterdir()) == ["member.retired-op2"]
    assert (data / "member.retired-op2/wal").is_dir()


def test_etcd_pids_are_those_of_the_hosts_own_network_namespace(tmp_path: Path) -> None:
    fake = tmp_path / "etcd"  # a process whose name is etcd
    fake.write_bytes(Path("/bin/sleep").read_bytes())
    fake.chmod(0o755)
    process = subprocess.Popen([str(fake), "30"])
    try:
        deadline = time.monotonic() + 5
        while str(process.pid) not in _sh(etcd_hosts._ETCD_PIDS).stdout.split():
            assert time.monotonic() < deadline, "the fake etcd was not found"
            time.sleep(0.05)
        other = run_in_namespaces(f"sh -c {shlex.quote(etcd_hosts._ETCD_PIDS)}", net=True)
        assert other.returncode == 0 and str(process.pid) not in other.stdout.split()
    finally:
        process.kill()
        process.wait()
    assert str(process.pid) not in _sh(etcd_hosts._ETCD_PIDS).stdout.split()
