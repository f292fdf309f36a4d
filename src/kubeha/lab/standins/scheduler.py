"""kube-scheduler stand-in: leader election on the Lease kube-system/kube-scheduler, nothing else.

The lab's pods are bound to nodes by whoever creates them; what kubeha looks at is which
scheduler leads and that one always does.
"""

from __future__ import annotations

import sys

from kubeha.lab.standins.common import secure_serving_flags, serve_healthz, start_standin
from kubeha.lab.standins.kubeclient import connect
from kubeha.lab.standins.leaderelection import LEADER_ELECTION_FLAGS, LeaderElector

COMPONENT = "kube-scheduler"


def main(argv: list[str] | None = None) -> int:
    flags, log, stopping = start_standin(COMPONENT, argv, {"kubeconfig": "", **LEADER_ELECTION_FLAGS,
                                                       **secure_serving_flags(10259)})
    client = connect(str(flags["kubeconfig"]), log)
    if client is None:
        return 1
    serve_healthz(flags, COMPONENT, log)
    elector = LeaderElector.from_flags(flags, client, COMPONENT, log)
    if elector is None:
        stopping.wait()
    else:
        elector.run(stopping)
    return 0


if __name__ == "__main__":
    sys.exit(main())
