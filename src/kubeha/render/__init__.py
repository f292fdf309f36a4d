"""Pure renderers: model objects in, configuration text out. No I/O but their own templates."""

from kubeha.render.controlplane import (
    RenderedFile,
    apiserver_flags,
    controller_manager_flags,
    default_etcd_servers,
    etcd_flags,
    kubelet_node_flags,
    render_apiserver,
    render_control_plane,
    render_controller_manager,
    render_etcd,
    render_kubelet,
    render_kubelet_config,
    render_scheduler,
    scheduler_flags,
)
from kubeha.render.ha import (
    HAPROXY_ADMIN_SOCKET,
    Backend,
    default_backends,
    render_haproxy_cfg,
    render_keepalived_conf,
    render_node_proxy_conf,
)
from kubeha.render.kubeconfig import kubeconfig_servers, render_kubeconfig, rewrite_kubeconfig_server

__all__ = [
    "HAPROXY_ADMIN_SOCKET",
    "Backend",
    "RenderedFile",
    "apiserver_flags",
    "controller_manager_flags",
    "default_backends",
    "default_etcd_servers",
    "etcd_flags",
    "kubeconfig_servers",
    "kubelet_node_flags",
    "render_apiserver",
    "render_control_plane",
    "render_controller_manager",
    "render_etcd",
    "render_haproxy_cfg",
    "render_keepalived_conf",
    "render_kubeconfig",
    "render_kubelet",
    "render_kubelet_config",
    "render_node_proxy_conf",
    "render_scheduler",
    "rewrite_kubeconfig_server",
    "scheduler_flags",
]
