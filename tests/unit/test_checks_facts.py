"""The facts `kubeha check` reads on a host: the combined script and the pure parsers."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

import pytest

from kubeha.checks.facts import (
    FSTAB_BAD_LINES, UID, DiskSpace, FactFailed, FstabLine, Readiness, Section, cert_files, combined_script,
    disk_space, fact_value, file_text, parse_cert_files, parse_curl_readyz, parse_df, parse_fstab_bad_lines,
    parse_sections, parsed_file, readyz_through,
)
from kubeha.checks.snapshot import clock_skew, host_facts, host_snapshot
from kubeha.hosts import Fact
from kubeha.model import Cluster, Host, Role, VirtualIP
from kubeha.pki import SubjectAltNames, issue, new_ca


def run_locally(facts: dict[str, Fact]) -> dict[str, Section]:
    return parse_sections(subprocess.run(["sh", "-c", combined_script(facts)], capture_output=True, text=True,
                                         check=True).stdout)


def test_combined_script_frames_each_fact_with_its_status_and_stderr(tmp_path):
    empty, text = tmp_path / "empty", tmp_path / "text"
    empty.write_text("")
    text.write_text("line 1\n\nline 3")  # no final newline: kept as it is
    facts = {"uid": UID, "missing": file_text(tmp_path / "nope"), "empty": file_text(empty),
             "text": file_text(text), "fails": Fact("failing", "echo out; echo oops >&2; exit 3", str)}
    sections = run_locally(facts)
    assert sections["fails"] == Section(3, "out\n", "oops")
    assert fact_value(facts["missing"], sections["missing"]) is None
    assert fact_value(facts["empty"], sections["empty"]) == ""
    assert fact_value(facts["text"], sections["text"]) == "line 1\n\nline 3"
    assert isinstance(fact_value(UID, sections["uid"]), int)
    with pytest.raises(FactFailed, match="finding the failing failed with exit status 3: oops"):
        fact_value(facts["fails"], sections["fails"])


def test_fact_value_reports_a_parse_error_and_a_missing_section():
    with pytest.raises(FactFailed, match="the user id cannot be parsed"):
        fact_value(UID, Section(0, "root\n", ""))
    with pytest.raises(FactFailed, match="finding the user id gave no output"):
        fact_value(UID, None)


def test_parsed_file_parses_only_a_present_file(tmp_path):
    conf = tmp_path / "servers"
    conf.write_text("a\nb\n")
    facts = {"present": parsed_file(conf, str.split), "absent": parsed_file(tmp_path / "x", str.split)}
    sections = run_locally(facts)
    assert fact_value(facts["present"], sections["present"]) == ["a", "b"]
    assert fact_value(facts["absent"], sections["absent"]) is None


def test_parse_df_and_the_nearest_existing_parent(tmp_path):
    assert parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                    "/dev/sda1 1000 600 400 60% /var\n") == DiskSpace("/var", 1024000, 409600)
    fact = disk_space(tmp_path / "not" / "yet")
    space = fact_value(fact, run_locally({"df": fact})["df"])
    assert space.size_bytes > 0 and 0 <= space.free_fraction <= 1
    with pytest.raises(ValueError, match="no file system"):
        parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n")


def test_parse_fstab_bad_lines():
    text = "# comment\n\nUUID=1 / ext4 defaults 0 1\n/dev/sdb1 /data\n  # indented comment\ntmpfs /tmp tmpfs rw\n"
    assert parse_fstab_bad_lines(text) == (FstabLine(4, "/dev/sdb1 /data"),)
    assert FSTAB_BAD_LINES.parse("") == ()


def test_cert_files_send_certificates_never_keys(tmp_path):
    ca = new_ca("test-ca")
    leaf = issue(ca, "apiserver", sans=SubjectAltNames(("kubernetes",), (IPv4Address("10.0.0.1"),)), server=True)
    (tmp_path / "etcd").mkdir()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "etcd" / "bundle.pem").write_bytes(leaf.key_pem + leaf.cert_pem + ca.cert_pem)
    (tmp_path / "ca.key").write_bytes(ca.key_pem)
    (tmp_path / "only-key.pem").write_bytes(leaf.key_pem)
    fact = cert_files(tmp_path, tmp_path / "etcd", tmp_path / "absent")
    section = run_locally({"certs": fact})["certs"]
    assert "PRIVATE KEY" not in section.stdout
    certs = {c.path: c for c in fact_value(fact, section)}
    assert set(certs) == {str(tmp_path / "ca.crt"), str(tmp_path / "etcd" / "bundle.pem")}
    bundle = certs[str(tmp_path / "etcd" / "bundle.pem")]
    assert bundle.sans == SubjectAltNames(("kubernetes",), (IPv4Address("10.0.0.1"),))  # the leaf, first
    assert bundle.not_after == leaf.cert.not_valid_after_utc


def test_parse_cert_files_marks_an_unreadable_certificate():
    [broken] = parse_cert_files("==> /p/x.pem\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert broken.path == "/p/x.pem" and broken.not_after is None


@pytest.mark.parametrize("stdout, expected", [
    ("ok\n200 0", Readiness(True, "ok")),
    ("[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n500 0",
     Readiness(False, "HTTP 500: [-]etcd failed: reason withheld")),
    ('{"kind":"Status"}\n401 0', Readiness(False, 'HTTP 401: {"kind":"Status"}')),
    ("\n000 7", Readiness(False, "connection refused")),
    ("\n000 99", Readiness(False, "curl failed with exit code 99")),
])
def test_parse_curl_readyz(stdout, expected):
    assert parse_curl_readyz(stdout) == expected


def test_readyz_through_a_proxy_that_is_not_configured_is_none(tmp_path):
    fact = readyz_through(1, tmp_path / "absent.conf")
    assert fact_value(fact, run_locally({"r": fact})["r"]) is None


@pytest.mark.parametrize("host_time, expected", [(100.2, 0.0), (99.0, -1.0), (103.5, 2.5)])
def test_clock_skew_is_what_the_round_trip_cannot_explain(host_time, expected):
    assert clock_skew(host_time, asked_at=100.0, answered_at=101.0) == pytest.approx(expected)


def test_host_facts_by_role_and_the_snapshot_they_make():
    master = Host(name="m1", address="10.0.0.11", roles={Role.MASTER, Role.ETCD})
    worker = Host(name="w1", address="10.0.0.31", roles={Role.WORKER})
    cluster = Cluster(hosts=(master, worker), vip=VirtualIP(address="10.0.0.100"))
    assert {"apiserver_flags", "etcd_flags", "etcd_disk", "haproxy", "keepalived", "lb 8443"} <= set(
        host_facts(cluster, master))
    worker_facts = host_facts(cluster, worker)
    assert not {"apiserver_flags", "etcd_disk", "haproxy"} & set(worker_facts)
    assert "kubeconfig /etc/kubernetes/kubelet.conf" in worker_facts
    snapshot = host_snapshot(worker, {"uid": 0, "kubeconfig /etc/kubernetes/kubelet.conf": ("https://127.0.0.1:6443",),
                                      "kubeconfig /etc/kubernetes/admin.conf": None,
                                      "node_proxy": FactFailed("bad nginx.conf"),
                                      "lb 8443": Readiness(True, "ok")}, 0.25)
    assert snapshot.uid == 0 and snapshot.clock_skew == 0.25
    assert snapshot.kubeconfigs == {"/etc/kubernetes/kubelet.conf": ("https://127.0.0.1:6443",)}
    assert snapshot.lb_readiness == {8443: Readiness(True, "ok")}
    assert snapshot.node_proxy is None and snapshot.unreadable == {"node_proxy": "bad nginx.conf"}
