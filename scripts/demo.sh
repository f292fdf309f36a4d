#!/usr/bin/env bash
# The demo: installs what is needed, builds a lab (3 masters, 3 spares, 3 workers), tours it, removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$(pwd)/.venv/bin:$PATH"
trap 'kubeha lab down' EXIT
kubeha lab up --masters 3 --spares 3 --workers 3
echo; echo "\$ kubectl get nodes   (through the VIP)"
kubectl --kubeconfig /var/lib/kubeha-lab/admin.conf get nodes -o wide
echo; echo "\$ etcdctl endpoint status   (on master1, over SSH, TLS with a client cert)"
kubeha lab ssh master1 -- ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
  --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
  --key=/etc/kubernetes/pki/etcd/healthcheck-client.key endpoint status --cluster -w table
echo; echo "\$ kubeha check   (the whole HA control plane, over SSH only)"
kubeha check -i /var/lib/kubeha-lab/cluster.yaml
echo; echo "\$ kubeha lab status"
kubeha lab status
