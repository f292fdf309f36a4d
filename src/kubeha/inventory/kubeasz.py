"""Import a kubeasz ansible ``hosts`` file (1.x to 3.x) as an Inventory."""

from __future__ import annotations

import re

from kubeha.errors import InputError
from kubeha.inventory.ansible import DocumentDraft, parse_ansible_inventory
from kubeha.inventory.inventory import Inventory
from kubeha.model import Layout, Role

# kubeasz 1.x names the groups kube-master/kube-node/lb, later releases kube_master/kube_node/ex_lb.
_ROLE_GROUPS = (
    (("etcd",), Role.ETCD),
    (("kube_master",), Role.MASTER),
    (("kube_node",), Role.WORKER),
    (("ex_lb", "lb"), Role.LB),
)
_CA_DIR = "/etc/kubernetes/ssl"
_URL = re.compile(r"^https?://(?P<host>[^/:]+)(?::(?P<port>[^/]*))?/?$")


def import_kubeasz(text: str, source: str = "hosts") -> Inventory:
    """The cluster a kubeasz ``hosts`` file describes; layout kubeasz, certificates in ca_dir."""
    draft = DocumentDraft.start(parse_ansible_inventory(text, source), ["all"])
    draft.set("layout", Layout.KUBEASZ.value, source)
    draft.add_hosts(_ROLE_GROUPS, name_var="k8s_nodename")
    draft.set_ssh_defaults()
    draft.use("apiserver_port", "SECURE_PORT")
    draft.use("service_cidr", "SERVICE_CIDR")
    draft.use("cluster_domain", "CLUSTER_DNS_DOMAIN", lambda domain: str(domain).rstrip("."))
    # ezctl writes cluster_dir as <base_dir>/clusters/<name>; the example keeps a placeholder
    cluster = re.search(r"/clusters/([^/]+)/?$", str(draft.variables.get("cluster_dir", "")))
    if cluster and cluster.group(1) != "_cluster_name_":
        draft.set("name", cluster.group(1), draft.var_places["cluster_dir"])
    if str(draft.variables.get("ca_dir", _CA_DIR)).rstrip("/") != _CA_DIR:
        draft.set("paths", {"pki_dir": draft.variables["ca_dir"]}, draft.var_places["ca_dir"])
    _vip(draft)
    return draft.build()


def _vip(draft: DocumentDraft) -> None:
    """The VIP: 1.x's MASTER_IP/KUBE_APISERVER, else the ex_lb hosts' EX_APISERVER_VIP.

    1.x clients reach the apiservers through the VIP alone; 3.x runs kube-lb, a node-local
    nginx, on every node. A MASTER_IP that is a master's own address is no VIP at all.
    """
    variables, inventory = draft.variables, draft.inventory
    if "KUBE_APISERVER" in variables or "MASTER_IP" in variables:
        var = "KUBE_APISERVER" if "KUBE_APISERVER" in variables else "MASTER_IP"
        url = _URL.match(str(variables.get("KUBE_APISERVER", f"https://{variables.get('MASTER_IP')}")))
        if url is None:
            raise InputError(f"{draft.var_places[var]}: {variables[var]!r} is not an https://address:port URL")
        address, port, place = url["host"], url["port"], draft.var_places[var]
        draft.set("load_balancer", {"node_local_proxy": False}, place)
    else:
        lb_hosts = inventory.members("ex_lb", "lb")
        vips: dict[str, str] = {}  # VIP -> the first ex_lb host that names it
        for host in lb_hosts:
            if (named := inventory.vars_of(host).get("EX_APISERVER_VIP")) is not None:
                vips.setdefault(str(named), host)
        if len(vips) > 1:
            raise InputError(f"{inventory.host_place(lb_hosts[0])}: the ex_lb hosts disagree on "
                             f"EX_APISERVER_VIP ({', '.join(sorted(vips))}): they share one VIP")
        if not vips:
            return
        address, host = next(iter(vips.items()))
        port, place = inventory.vars_of(host).get("EX_APISERVER_PORT"), inventory.host_place(host)
    if address in {str(h["address"]) for h in draft.data["hosts"]}:
        return
    vip = {"address": address, "port": port or 8443}
    if "LB_IF" in variables:
        vip["interface"] = variables["LB_IF"]
    draft.set("vip", vip, place)
    draft.notes.append(
        f"{place}: the hosts file does not say the keepalived virtual_router_id"
        + ("" if "LB_IF" in variables else " or interface")
        + ": kubeha assumes the defaults; check /etc/keepalived/keepalived.conf on the LB hosts")
