#!/usr/bin/env bash
# The demo: installs what is needed, builds a lab (3 masters, 3 spares, 3 workers), tours it, plans a VIP
# change, restarts every apiserver with the probe running, removes the lab.
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
INVENTORY=/var/lib/kubeha-lab/cluster.yaml
NEW_VIP=$(python -c "from kubeha.inventory import load_inventory; print(load_inventory('$INVENTORY').cluster.vip.address + 50)")
echo; echo "\$ kubeha plan change-endpoint --vip $NEW_VIP   (what moving the VIP would do; changes nothing)"
kubeha plan change-endpoint --vip "$NEW_VIP" -i "$INVENTORY"
echo; echo "\$ kubeha rolling-restart --component kube-apiserver --yes   (with the availability probe)"
kubeha rolling-restart --component kube-apiserver -i "$INVENTORY" --yes
