"""`kubeha lb apply`: the VIP and load balancers (haproxy + keepalived on the LB hosts, the
node-local nginx on the nodes), planned purely, then carried out over SSH; and taking one
apiserver out of every load balancer and putting it back (`kubeha.lb.drain`)."""

from kubeha.lb.apply import LbApplyResult, LbHostsState, StepDone, apply_lb_plan, check_configs, read_lb_state
from kubeha.lb.drain import BackendStates, DrainRefused, backend_states, put_back, take_out
from kubeha.lb.plan import (
    HAPROXY, KEEPALIVED, NGINX, SERVICES, Action, LbPlan, LbService, ManagedConfig, ServiceStep,
    keepalived_priority, lb_configs, node_proxy_hosts, plan_lb_apply,
)

__all__ = [
    "HAPROXY", "KEEPALIVED", "NGINX", "SERVICES", "Action", "BackendStates", "DrainRefused", "LbApplyResult",
    "LbHostsState", "LbPlan", "LbService", "ManagedConfig", "ServiceStep", "StepDone", "apply_lb_plan",
    "backend_states", "check_configs", "keepalived_priority", "lb_configs", "node_proxy_hosts", "plan_lb_apply",
    "put_back", "read_lb_state", "take_out",
]
