#!/usr/bin/env bash
# Installs everything kubeha, its lab and its tests need on a Debian machine (run as root):
# the Debian packages of the real components and a virtualenv with kubeha in .venv.
# --tests: also Debian's chromium (the report is checked as Chromium renders it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (the lab creates network namespaces and mounts): sudo $0" >&2
  exit 1
fi

packages=(etcd-server etcd-client haproxy keepalived nginx libnginx-mod-stream openssh-server
          openssh-client iproute2 util-linux procps curl sudo python3-venv ca-certificates)
# Any kubectl will do; Debian's kubernetes-client conflicts with other kubectl packages.
command -v kubectl >/dev/null || packages+=(kubernetes-client)
[ "${1:-}" = "--tests" ] && packages+=(chromium)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  # The lab runs these daemons inside its own namespaces: keep them from starting on this machine.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
  fi
  trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "kubeha installed: $(pwd)/.venv/bin/kubeha"
