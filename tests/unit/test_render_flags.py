"""Editing one flag of a component's manifest or unit in place."""

from __future__ import annotations

import pytest

from kubeha.errors import InputError
from kubeha.model import Cluster, Host, Layout, Role
from kubeha.render.controlplane import render_apiserver
from kubeha.render.flags import replace_flag

MASTER = Host(name="m1", address="10.0.0.11", roles=frozenset({Role.MASTER, Role.ETCD}))


@pytest.mark.parametrize("layout", list(Layout))
def test_replace_flag_changes_that_flag_only(layout):
    cluster = Cluster(layout=layout, hosts=(MASTER,))
    text = render_apiserver(cluster, MASTER).content
    changed = replace_flag(text, "etcd-servers", "https://10.0.0.21:2379,https://10.0.0.22:2379")
    assert changed == render_apiserver(cluster, MASTER,
                                       etcd_servers=["https://10.0.0.21:2379", "https://10.0.0.22:2379"]).content


def test_a_space_separated_flag_is_rewritten_and_a_missing_one_refused():
    unit = "ExecStart=/usr/bin/kube-apiserver \\\n  --etcd-servers https://a:2379 \\\n  --v=2\n"
    assert replace_flag(unit, "etcd-servers", "https://b:2379") == \
        "ExecStart=/usr/bin/kube-apiserver \\\n  --etcd-servers=https://b:2379 \\\n  --v=2\n"
    with pytest.raises(InputError, match="no --etcd-cafile"):
        replace_flag(unit, "etcd-cafile", "/x")
    with pytest.raises(InputError, match="white space"):
        replace_flag(unit, "etcd-servers", "a b")


@pytest.mark.parametrize("layout", list(Layout))
def test_a_missing_flag_is_added_when_asked_and_the_file_still_parses(layout):
    from kubeha.discover.configs import parse_flags
    from kubeha.discover.discover import component_command
    from kubeha.render.controlplane import render_etcd
    cluster = Cluster(layout=layout, hosts=(MASTER,))
    text = render_etcd(cluster, MASTER).content
    assert "--election-timeout" not in text
    changed = replace_flag(text, "election-timeout", "500", "etcd", add_missing=True)
    changed = replace_flag(changed, "heartbeat-interval", "50", "etcd", add_missing=True)
    before, after = (parse_flags(component_command(layout, t, "etcd")) for t in (text, changed))
    assert after == {**before, "election-timeout": "500", "heartbeat-interval": "50"}
    # set again: changed in place, not added twice
    assert replace_flag(changed, "election-timeout", "1000", "etcd", add_missing=True).count("--election-timeout") == 1
