"""Taking out the last serving apiserver is refused and changes nothing. (An apiserver taken
out, restarted and put back without a failed request is `kubeha rolling-restart`'s test,
tests/lab/test_rolling_restart.py.)"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from helpers.wait import wait_for

from kubeha.access import ClusterAccess
from kubeha.hosts import BackupSet
from kubeha.inventory import Inventory, SshDefaults
from kubeha.lab import Lab
from kubeha.lb import DrainRefused, backend_states, node_proxy_hosts, put_back, take_out

pytestmark = pytest.mark.lab

VICTIM = "master1"


def _inventory(lab: Lab) -> Inventory:
    """The lab's cluster (without its spare hosts) and its SSH key, as its cluster.yaml has them."""
    return Inventory(cluster=lab.topology().cluster,
                     ssh=SshDefaults(key_file=lab.paths.ssh_key, known_hosts=lab.paths.known_hosts))


def _operation_id(what: str) -> str:
    return f"lb-drain-{what}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}"


def _nginx_confs(lab: Lab, cluster) -> dict[str, bytes]:
    return {h.name: lab.paths.on_host(h.name, cluster.paths.node_proxy_conf).read_bytes()
            for h in node_proxy_hosts(cluster)}


def test_taking_out_the_last_serving_apiserver_is_refused_and_changes_nothing(lab: Lab):
    inventory = _inventory(lab)
    cluster = inventory.cluster
    others = [m.name for m in cluster.masters if m.name != VICTIM]
    backup = BackupSet(_operation_id("refused"))
    with ClusterAccess(inventory) as access:
        wait_for(lambda: all(backend_states(access, cluster).in_everywhere(m.name) for m in cluster.masters),
                 30, "every apiserver in every load balancer (the lab is shared)")
        try:
            for name in others:
                take_out(access, cluster, name, backup, drain_seconds=0.5)
            take_out(access, cluster, others[0], backup, drain_seconds=0.5)  # out already: fine
            states, confs = backend_states(access, cluster), _nginx_confs(lab, cluster)
            refused_backup = BackupSet(_operation_id("refused-alone"))
            with pytest.raises(DrainRefused) as refused:
                take_out(access, cluster, VICTIM, refused_backup)
            assert backend_states(access, cluster) == states
            assert _nginx_confs(lab, cluster) == confs
            assert not any(lab.paths.on_host(h.name, refused_backup.directory).exists() for h in cluster.hosts)
        finally:
            for name in others:
                put_back(access, cluster, name, backup)
        assert all(backend_states(access, cluster).in_everywhere(m.name) for m in cluster.masters)
    message = str(refused.value)
    print(message)
    assert "\n" not in message
    lbs = ", ".join(h.name for h in cluster.lb_hosts)
    proxies = ", ".join(h.name for h in node_proxy_hosts(cluster))
    assert message == (f"refusing to take {VICTIM} out of the load balancers: the haproxy on {lbs} would have "
                       f"no other UP apiserver (others: {others[0]} MAINT, {others[1]} MAINT); the node-local "
                       f"proxy on {proxies} would have no other apiserver in rotation; bring another apiserver "
                       "back first (nothing was changed)")
    assert "nothing was changed" in message
