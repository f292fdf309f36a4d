"""Fact parsers and the small pure helpers of the host layer: no hosts needed."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Interface

import pytest

from kubeha.hosts.backup import BackupEntry, BackupManifest, BackupSet
from kubeha.hosts.connection import describe_command
from kubeha.hosts.facts import (
    InterfaceAddress, file_sha256, holds_address, parse_hostname, parse_ipv4_addresses, parse_sha256,
    parse_unit_states, unit_states,
)
from kubeha.hosts.files import FileStat, parse_saved, parse_stat, save_copies_command

IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0@if7    inet 10.212.0.11/24 brd 10.212.0.255 scope global eth0\\       valid_lft forever
2: eth0@if7    inet 10.212.0.100/32 scope global eth0\\       valid_lft forever preferred_lft forever
"""


def test_parse_ipv4_addresses_keeps_every_address_with_its_interface():
    assert parse_ipv4_addresses(IP_ADDR) == (
        InterfaceAddress("lo", IPv4Interface("127.0.0.1/8")),
        InterfaceAddress("eth0", IPv4Interface("10.212.0.11/24")),
        InterfaceAddress("eth0", IPv4Interface("10.212.0.100/32")),  # a keepalived VIP
    )
    assert parse_ipv4_addresses("") == ()


def test_parse_unit_states_pairs_states_with_units():
    assert parse_unit_states(("etcd", "kubelet"), "active\nfailed\n") == {
        "etcd": "active", "kubelet": "failed"}
    with pytest.raises(ValueError, match="1 states for 2 units"):
        parse_unit_states(("etcd", "kubelet"), "active\n")


def test_unit_states_fact_accepts_not_active_exit_status():
    fact = unit_states("etcd", "kube-apiserver")
    assert fact.command == "systemctl is-active etcd kube-apiserver"
    assert fact.answer_statuses == {0, 3}
    assert fact.parse("inactive\nactive\n") == {"etcd": "inactive", "kube-apiserver": "active"}


def test_file_sha256_quotes_the_path_and_parses_a_missing_file_as_none():
    fact = file_sha256("/etc/my file")
    assert fact.command == "[ ! -e '/etc/my file' ] || sha256sum -- '/etc/my file'"
    assert parse_sha256("") is None
    assert parse_sha256("e3b0c442  /etc/my file\n") == "e3b0c442"


def test_parse_hostname_and_stat():
    assert parse_hostname("m1\n") == "m1"
    assert parse_stat("4750 1234 1234 768\n") == FileStat(0o4750, 1234, 1234, 768)


def test_many_files_are_backed_up_in_one_command(tmp_path):
    there, copies = tmp_path / "there", tmp_path / "copies"
    there.write_text("x")
    there.chmod(0o640)
    pairs = [(str(there), str(copies / "0001-there")), (str(tmp_path / "absent"), str(copies / "0002-absent"))]
    done = subprocess.run(save_copies_command(pairs), capture_output=True, text=True, check=True)
    saved = parse_saved(done.stdout)
    assert saved[1] is None and saved[0] is not None and saved[0].mode == 0o640 and saved[0].size == 1
    assert (copies / "0001-there").read_text() == "x" and not (copies / "0002-absent").exists()


def test_describe_command_hides_arguments_of_sensitive_commands():
    assert describe_command(["etcdctl", "--password", "p4ss"]) == "`etcdctl --password p4ss`"
    assert describe_command(["etcdctl", "--password", "p4ss"], sensitive=True) == \
        "`etcdctl` (arguments hidden)"
    assert describe_command("x " * 100).endswith(" ...`")


def test_backup_manifest_keeps_the_first_record_of_a_path():
    manifest = BackupManifest(operation_id="op", host="m1")
    entry = BackupEntry(path="/etc/a", existed=False)
    manifest = manifest.with_entries(entry)
    assert manifest.entry("/etc/a") == entry and manifest.entry("/etc/b") is None
    assert manifest.saved_name("/etc/kubernetes/admin.conf") == "0002-admin.conf"
    # copies named in one go, before their entries are made
    assert manifest.saved_name("/etc/kubernetes/kubelet.conf", later=2) == "0004-kubelet.conf"
    assert BackupManifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_backup_set_refuses_an_operation_id_that_is_not_a_file_name():
    assert str(BackupSet("op-1").manifest_path) == "/var/lib/kubeha/backups/op-1/manifest.json"
    with pytest.raises(ValueError):
        BackupSet("../etc")


def test_the_vip_is_found_in_ip_addr_output_only_as_a_whole_address():
    shown = ("2: eth0    inet 10.212.3.11/24 brd 10.212.3.255 scope global eth0\\       valid_lft forever\n"
             "2: eth0    inet 10.212.3.100/32 scope global eth0\\       valid_lft forever\n")
    assert holds_address(parse_ipv4_addresses(shown), IPv4Address("10.212.3.100"))
    assert not holds_address(parse_ipv4_addresses(shown), IPv4Address("10.212.3.10"))
    assert not holds_address(parse_ipv4_addresses(shown), IPv4Address("10.212.3.1"))
