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
