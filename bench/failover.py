"""Benchmark: unplanned failover. The VIP holder or one apiserver dies hard; how long until
another host holds the VIP, and until the API answers through the VIP again; kubeha's
keepalived/haproxy settings next to stock ones, measured side by side in one run.

Target (issue: benchmarks): VIP moved in under 0.5 s, API answering through the VIP in
under 1.5 s after the kill.

    sudo .venv/bin/python bench/failover.py [--runs 3]

Faults, each on a fresh lab (KUBEHA_LAB_ID=8, kubeadm, 3 masters each running haproxy and
keepalived, the VIP on one of them):
- holder-killed: every process of the VIP holder SIGKILLed and its link cut (a host that
  dies: no priority-0 advert, no FIN);
- holder-link-cut: the VIP holder's port taken off the lab bridge; the host runs on, its
  carrier up (a switch port or cable failing);
- apiserver-killed: the apiserver of a master that does not hold the VIP SIGKILLed.
Settings:
- kubeha: what `kubeha lb apply` renders (VRRPv3 advert_int 0.1 s; haproxy checks of
  /readyz every 400 ms, fall 3, rise 2; a connect given up after 150 ms and retried once
  on another server); etcd at its default timings (heartbeat 100 ms, election 1000 ms);
- kubeha-etcd-500: the same, and etcd's heartbeat 50 ms and election timeout 500 ms, set by
  `kubeha rolling-restart --component etcd --set ...` once the lab is up;
- stock: keepalived advert_int 1 (its default and kubeadm's HA guide's) and haproxy's
  default check timings (inter 2 s, fall 3, rise 2) with kubeadm's HA guide's `timeout
  connect 5s` and `timeout check 10s`, everything else the same.
With --holder-leads, etcd leadership is moved to the VIP holder's member before the kill:
the worst case, where the API waits for an etcd election too (otherwise the holder leads
etcd in about a third of the cases, by chance).
Measured from this machine: GET /readyz through the VIP every 20 ms on a new connection
(300 ms timeout); the VIP's holder read every 20 ms from each LB host's namespace; the
leader each other etcd member names, asked every 50 ms. "API answering" is when the first
request started after the last failed one got its answer; "etcd elected" (only when the
victim led etcd) when a member first named another leader.
Writes bench/results/failover.json (or --results); BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from kubeha.access import ClusterAccess
from kubeha.etcd.errors import EtcdError
from kubeha.etcd.gateway import EtcdClient
from kubeha.inventory import load_inventory
from kubeha.lab import Lab, LabSpec
from kubeha.lab import namespaces as ns
from kubeha.render.ha import KEEPALIVED_ADVERT_INT
from provenance import provenance

RESULTS = Path(__file__).parent / "results" / "failover.json"
LAB_ID = "8"
WATCH_SECONDS = 12.0
INTERVAL = 0.02
ETCD_INTERVAL = 0.05  # each member other than the VIP holder asked for its leader
# kubeha's keepalived.conf made stock: keepalived's default advert interval
STOCK_KEEPALIVED_SED = f"s/advert_int {KEEPALIVED_ADVERT_INT}$/advert_int 1/"


def stock_settings(lab: Lab, cluster) -> None:
    """keepalived at advert_int 1 and haproxy with its default check timings and the
    timeouts of kubeadm's HA guide, on every LB host."""
    for host in cluster.lb_hosts:
        lab.on(host.name, ["sh", "-c", f"sed -i '{STOCK_KEEPALIVED_SED}' "
                                       "/etc/keepalived/keepalived.conf && "
                                       "sed -i -E 's/ inter [0-9a-z]+ fastinter [0-9a-z]+ downinter [0-9a-z]+ "
                                       "fall [0-9]+ rise [0-9]+//; s/timeout connect .*/timeout connect 5s/; "
                                       "s/timeout check .*/timeout check 10s/' /etc/haproxy/haproxy.cfg && "
                                       "systemctl reload haproxy"])
    # one at a time, the holder last: the VIP stays where it is
    holder = lab.vip_holders(cluster)[0]
    for host in sorted(cluster.lb_hosts, key=lambda h: h.name == holder):
        lab.on(host.name, ["systemctl", "restart", "keepalived"])
        time.sleep(4)
    wait(lambda: len(lab.vip_holders(cluster)) == 1, 20)


ETCD_500 = ("heartbeat-interval=50", "election-timeout=500")


def etcd_timings(lab: Lab, flags: tuple[str, ...]) -> None:
    """etcd's timings set on every member the way an operator would: `kubeha rolling-restart`."""
    kubeha = Path(sys.executable).parent / "kubeha"
    with tempfile.TemporaryDirectory() as journal:
        subprocess.run([str(kubeha), "rolling-restart", "--component", "etcd", *(a for f in flags for a in ("--set", f)),
                        "-i", str(lab.paths.inventory), "--journal", f"{journal}/journal.sqlite", "--yes",
                        "--no-probe"], check=True, stdout=subprocess.DEVNULL)


def wait(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


class Watch:
    """Requests through the VIP, the VIP's holder and the etcd leader that the members other
    than the VIP holder know, each on its own thread, timestamped."""

    def __init__(self, lab: Lab, cluster, etcd: EtcdClient, etcd_urls: list[str]) -> None:
        self.lab, self.cluster = lab, cluster
        self.etcd, self.etcd_urls = etcd, etcd_urls
        tls = ssl.create_default_context(cafile=str(lab.paths.ca_cert))
        tls.load_cert_chain(str(lab.paths.admin_cert), str(lab.paths.admin_key))
        self.client = httpx.Client(base_url=cluster.endpoint, verify=tls, timeout=0.3,
                                   limits=httpx.Limits(max_keepalive_connections=0))
        # (started, finished, answered 200)
        self.requests: list[tuple[float, float, bool]] = []
        self.holders: list[tuple[float, tuple[str, ...]]] = []
        # (asked, the leader each member names: 0 for none, None for no answer)
        self.leaders: list[tuple[float, tuple[int | None, ...]]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._requests), threading.Thread(target=self._holders),
                        threading.Thread(target=self._leaders)]

    def _requests(self) -> None:
        while not self.stop.is_set():
            started = time.time()
            try:
                ok = self.client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                ok = False
            self.requests.append((started, time.time(), ok))
            self.stop.wait(max(0.0, INTERVAL - (time.time() - started)))

    def _holders(self) -> None:
        while not self.stop.is_set():
            self.holders.append((time.time(), tuple(self.lab.vip_holders(self.cluster))))
            self.stop.wait(INTERVAL)

    def _leaders(self) -> None:
        while not self.stop.is_set():
            asked = time.time()
            self.leaders.append((asked, tuple(self._leader_at(url) for url in self.etcd_urls)))
            self.stop.wait(max(0.0, ETCD_INTERVAL - (time.time() - asked)))

    def _leader_at(self, url: str) -> int | None:
        try:
            return self.etcd.status(url, timeout=ETCD_INTERVAL).leader
        except EtcdError:
            return None

    def __enter__(self) -> Watch:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.client.close()


def root_veth(lab: Lab, host: str) -> str:
    """The bridge-side end of ``host``'s eth0."""
    peer = ns.run(["ip", "-n", lab.names.netns(host), "-o", "link", "show", "eth0"]).stdout.split(":")[1]
    index = peer.split("@if")[1]
    for line in ns.run(["ip", "-o", "link", "show"]).stdout.splitlines():
        if line.split(":")[0] == index:
            return line.split(":")[1].strip().split("@")[0]
    raise RuntimeError(f"no bridge port for {host}")


def inject(lab: Lab, cluster, fault: str) -> tuple[float, str]:
    holder = lab.vip_holders(cluster)[0]
    if fault == "apiserver-killed":
        victim = next(h.name for h in cluster.masters if h.name != holder)
        pids = {p for p in ns.pids_in_netns(lab.names.netns(victim)) if _comm(p) == "kube-apiserver"}
        at = time.time()
        ns.kill_all(pids)
        return at, victim
    veth = root_veth(lab, holder)
    at = time.time()
    if fault == "holder-killed":
        ns.run(["ip", "link", "set", veth, "down"])
        ns.kill_all(ns.pids_in_netns(lab.names.netns(holder)))
    else:
        ns.run(["ip", "link", "set", veth, "nomaster"])
    return at, holder


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def measure(settings: str, fault: str, holder_leads: bool = False) -> dict:
    os.environ["KUBEHA_LAB_ID"] = LAB_ID
    lab = Lab()
    try:
        cluster = lab.up(LabSpec(masters=3, spares=0, workers=1)).cluster
        if settings == "stock":
            stock_settings(lab, cluster)
        elif settings == "kubeha-etcd-500":
            etcd_timings(lab, ETCD_500)
        time.sleep(3)  # haproxy's checks settled
        with ClusterAccess(load_inventory(lab.paths.inventory)) as access:
            etcd = access.etcd()
            members = etcd.member_list()
            holder = lab.vip_holders(cluster)[0]
            if holder_leads and fault != "apiserver-killed":
                etcd.move_leader(next(m.id for m in members if m.name == holder))
                time.sleep(1)
            leader = etcd.leader()[0]
            others = [m.client_urls[0] for m in members if m.name != holder]
            with Watch(lab, cluster, etcd, others) as watch:
                time.sleep(1)
                at, victim = inject(lab, cluster, fault)
                time.sleep(WATCH_SECONDS)
        after = [r for r in watch.requests if r[0] >= at]
        failed = [started for started, _, ok in after if not ok]
        # when the first request started after the last failure got its answer
        answering = next((finished for started, finished, ok in after
                          if ok and (not failed or started > failed[-1])), None)
        moved = next((t for t, h in watch.holders if t >= at and set(h) - {victim}), None)
        leader_killed = leader.name == victim and fault != "apiserver-killed"
        # asked when a member first named a leader other than the dead one: etcd usable again
        elected = next((asked for asked, named in watch.leaders
                        if asked >= at and any(n not in (None, 0, leader.id) for n in named)), None)
        return {
            # the victim led etcd: every apiserver's /readyz fails until etcd elects another
            "settings": settings, "fault": fault, "victim": victim, "etcd_leader_killed": leader_killed,
            "vip_moved_s": round(moved - at, 3) if moved and fault != "apiserver-killed" else None,
            "etcd_elected_s": round(elected - at, 3) if elected and leader_killed else None,
            "api_answering_s": round(answering - at, 3) if answering else None,
            "failed_requests": len(failed), "requests": len(after),
        }
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settings", default="kubeha,stock", help="of kubeha, kubeha-etcd-500, stock")
    parser.add_argument("--faults", default="holder-killed,holder-link-cut,apiserver-killed")
    parser.add_argument("--holder-leads", action="store_true", help="the VIP holder leads etcd when it is hit")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cases = [(s, f) for f in args.faults.split(",") for s in args.settings.split(",")]
    runs = []
    for _ in range(args.runs):
        for settings, fault in cases:  # side by side: each run measures every case
            result = measure(settings, fault, args.holder_leads)
            print(json.dumps(result))
            runs.append(result)
    medians = {}
    for settings, fault in cases:
        mine = [r for r in runs if (r["settings"], r["fault"]) == (settings, fault)]
        medians[f"{fault} {settings}"] = {
            key: (statistics.median(v) if (v := [r[key] for r in mine if r[key] is not None]) else None)
            for key in ("vip_moved_s", "etcd_elected_s", "api_answering_s", "failed_requests")}
    result = {**provenance(), "command": " ".join(["bench/failover.py", *sys.argv[1:]]), "runs": runs,
              "medians": medians}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
