"""Running the plan simulator on the cluster as it is now: its model read once, then the
plan played through it (``kubeha plan ... --verify`` and `kubeha apply` before the first step)."""

from __future__ import annotations

from kubeha.access import ClusterAccess
from kubeha.operations.endpoint import read_endpoint_facts
from kubeha.operations.etcd import read_facts
from kubeha.operations.etcd_plan import MembershipChange
from kubeha.operations.etcd_view import vip_holders
from kubeha.operations.nodes import read_nodes_files
from kubeha.operations.nodes_plan import node_hosts
from kubeha.operations.simulator import ApiFacts, StepVerdict, model_from_facts, simulate, touches_api, violations
from kubeha.plan import Plan, PlanError


def read_api_facts(access: ClusterAccess) -> ApiFacts:
    """Who holds each VIP, and what each reachable node's kubelet and kube-proxy and each
    master's kubeconfigs name (a host that cannot be read is left out of the model)."""
    cluster = access.cluster
    holders = {str(vip.address): next(iter(vip_holders(access, cluster, vip)), None) for vip in cluster.vips}
    nodes, _ = read_nodes_files(access, [h for h in node_hosts(cluster) if h.name not in access.connect_errors])
    endpoint = read_endpoint_facts(access)
    return ApiFacts(vip_holders=holders, nodes={name: files.servers for name, files in nodes.items()},
                    control_planes={m: tuple(s for servers in files.values() for s in servers)
                                    for m, files in endpoint.kubeconfigs.items()},
                    kube_proxy_configmap=endpoint.kube_proxy_configmap)


def verify_plan(access: ClusterAccess, plan: Plan) -> list[StepVerdict]:
    cluster = access.cluster
    api = read_api_facts(access) if touches_api(plan) else None  # etcd-only plans skip the SSH round to every node
    return simulate(plan, cluster, model_from_facts(cluster, read_facts(access, MembershipChange()), api))


def refuse_unsafe(plan: Plan, verdicts: list[StepVerdict]) -> None:
    """PlanError naming every rule the plan would break, and where."""
    broken = violations(verdicts)
    if broken:
        raise PlanError(f"plan {plan.operation_id} would break a safety rule: " + "; ".join(broken))


__all__ = ["read_api_facts", "refuse_unsafe", "verify_plan"]
