"""kubeha: plan, check and change the HA control plane of self-managed Kubernetes clusters."""
