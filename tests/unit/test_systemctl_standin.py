"""The lab's systemctl stand-in, driving real processes (sleep, nginx, haproxy, etcd).

Each test runs one shell script in a private mount and PID namespace: ``/etc/systemd/system``,
``/run`` and ``/var/log`` are fresh tmpfs mounts, ``/usr/bin/systemctl`` and
``/usr/bin/journalctl`` are the stand-in's wrappers, as on a lab host. When the script ends
(or the test times out) the namespace's PID 1 dies and the kernel kills every process it
started, supervisors and services included.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from helpers.etcd import free_port
from kubeha.lab.standins.systemctl import standalone_argv


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    # never a skip: without root these tests fail and say why
    if os.geteuid() != 0:
        pytest.fail("these tests need root (mount namespaces): run scripts/test.sh as root")


PRELUDE = """
set -u
mount -t tmpfs tmpfs /etc/systemd/system
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log
mount --bind {bin}/systemctl /usr/bin/systemctl
mount --bind {bin}/journalctl /usr/bin/journalctl
unit() {{ mkdir -p "$(dirname "$1")"; cat > "$1"; }}
# wait_for SECONDS COMMAND...: poll until the command succeeds
wait_for() {{
    t=$(( $1 * 20 )); shift
    until "$@" >/dev/null 2>&1; do
        t=$((t - 1)); [ $t -gt 0 ] || {{ echo "timed out waiting for: $*"; return 1; }}
        sleep 0.05
    done
}}
http() {{ curl -s --noproxy '*' --max-time 2 "http://127.0.0.1:$1/"; }}
"""


@pytest.fixture
def host(tmp_path: Path):
    """Run a script on a throwaway lab-like host; returns (exit code, stdout+stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    command = shlex.join(standalone_argv())  # as the lab's wrappers run it
    for name, extra in (("systemctl", ""), ("journalctl", " journalctl")):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec {command}{extra} "$@"\n')
        wrapper.chmod(0o755)

    def run(script: str, timeout: float = 30) -> tuple[int, str]:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child", "--mount-proc", "sh", "-c", PRELUDE.format(bin=bin_dir) + script],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
            cwd=tmp_path)
        return proc.returncode, proc.stdout

    return run


def lines_after(output: str, marker: str) -> str:
    """The output line printed right after ``echo <marker>``."""
    found = output.split(f"{marker}\n", 1)
    assert len(found) == 2, output
    return found[1].splitlines()[0] if found[1] else ""


SLEEPER = """
unit /etc/systemd/system/sleeper.service <<'EOF'
[Unit]
Description=Sleeps
[Service]
ExecStart=/bin/sh -c 'echo hello from $0; exec sleep 1000' %n
[Install]
WantedBy=multi-user.target
EOF
"""


def test_simple_service_lifecycle(host):
    code, out = host(SLEEPER + """
systemctl start sleeper; echo "start=$?"
systemctl is-active sleeper; echo "is-active=$?"
systemctl status sleeper --no-pager; echo "status=$?"
echo MAINPID; systemctl show -p MainPID --value sleeper
systemctl show --property=ActiveState,SubState sleeper
wait_for 5 grep -q 'hello from' /var/log/kubeha-systemd/sleeper.service.log
journalctl -u sleeper -n 5 --no-pager
systemctl is-enabled sleeper; echo "is-enabled=$?"
systemctl enable sleeper
readlink /etc/systemd/system/multi-user.target.wants/sleeper.service
systemctl is-enabled sleeper; echo "is-enabled=$?"
systemctl stop sleeper.service; echo "stop=$?"
systemctl is-active sleeper; echo "is-active=$?"
systemctl status sleeper >/dev/null; echo "status=$?"
pgrep -x sleep || echo no-sleep
systemctl start missing; echo "missing=$?"
systemctl is-active -q missing; echo "is-active-missing=$?"
systemctl disable --now sleeper
test -e /etc/systemd/system/multi-user.target.wants/sleeper.service || echo unlinked
""")
    assert code == 0, out
    assert "start=0" in out and "active\nis-active=0" in out
    assert "Active: active (running)" in out and "status=0" in out
    assert int(lines_after(out, "MAINPID")) > 1
    assert "ActiveState=active\nSubState=running" in out
    assert "sleeper: hello from sleeper.service" in out
    assert "disabled\nis-enabled=1" in out and "enabled\nis-enabled=0" in out
    assert "/etc/systemd/system/sleeper.service" in out
    assert "stop=0" in out and "inactive\nis-active=3" in out and "status=3" in out
    assert "no-sleep" in out
    assert "Failed to start missing.service: Unit missing.service not found.\nmissing=5" in out
    assert "is-active-missing=3" in out and "unlinked" in out


def test_environment_specifiers_user_and_workdir(host, tmp_path):
    code, out = host("""
printf '# comment\\nFROM_FILE="file value"\\nOVERRIDDEN=file\\n' > /run/env
unit /etc/systemd/system/envy@.service <<'EOF'
[Service]
Type=oneshot
RemainAfterExit=yes
Environment="SPLIT=a b  c" JOINED=x\\ y OVERRIDDEN=unit
Environment=INSTANCE=%i NAME=%n PREFIX=%p
EnvironmentFile=/run/env
EnvironmentFile=-/run/does-not-exist
User=nobody
WorkingDirectory=/tmp
RuntimeDirectory=envy
ExecStart=/bin/sh -c 'for a in "$@"; do echo "arg=[$a]"; done' sh $SPLIT ${SPLIT} \\
    ${FROM_FILE} $OVERRIDDEN $$HOME
ExecStart=/bin/sh -c 'echo "id=$(id -un) cwd=$(pwd) inst=$INSTANCE name=$NAME p=$PREFIX"'
ExecStart=/bin/sh -c 'echo "joined=[$JOINED] runtime=$RUNTIME_DIRECTORY"; ls -ld /run/envy'
EOF
systemctl start envy@one; echo "start=$?"
systemctl is-active envy@one.service
journalctl -u envy@one.service
""")
    assert code == 0, out
    assert "start=0" in out and "\nactive\n" in out
    args = [line.split("arg=", 1)[1] for line in out.splitlines() if "arg=" in line]
    assert args == ["[a]", "[b]", "[c]", "[a b  c]", "[file value]", "[file]", "[$HOME]"]
    assert "id=nobody cwd=/tmp inst=one name=envy@one.service p=envy" in out
    assert "joined=[x y] runtime=/run/envy" in out and " nobody " in out


def test_restart_always_after_kill_and_not_after_stop(host):
    code, out = host("""
unit /etc/systemd/system/phoenix.service <<'EOF'
[Service]
ExecStart=/bin/sleep 1000
Restart=always
RestartSec=200ms
EOF
systemctl start phoenix
first=$(systemctl show -p MainPID --value phoenix)
kill -9 "$first"
wait_for 5 sh -c "[ \\$(systemctl show -p MainPID --value phoenix) != $first ] && systemctl is-active -q phoenix"
second=$(systemctl show -p MainPID --value phoenix)
echo "first=$first second=$second"
echo RESTARTS; systemctl show -p NRestarts --value phoenix
systemctl stop phoenix
sleep 0.5
systemctl is-active phoenix
pgrep -x sleep || echo no-sleep
journalctl -u phoenix
""")
    assert code == 0, out
    first, second = out.split("first=")[1].split()[0], out.split("second=")[1].split()[0]
    assert first != second and int(second) > 0
    assert lines_after(out, "RESTARTS") == "1"
    assert "\ninactive\n" in out and "no-sleep" in out
    assert "code=killed, status=9/KILL" in out and "restart counter is at 1" in out


NOTIFIER = """
cat > /run/notifier.py <<'EOF'
import os, socket, sys, time
time.sleep(0.7)
open("/run/notifier.before-ready", "w").close()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect(os.environ["NOTIFY_SOCKET"])
sock.send(b"STATUS=serving\\nREADY=1")
print("ready sent", flush=True)
time.sleep(1000)
EOF
unit /etc/systemd/system/notifier.service <<'EOF'
[Service]
Type=notify
ExecStart=/usr/bin/python3 /run/notifier.py
EOF
"""


def test_notify_waits_for_ready(host):
    code, out = host(NOTIFIER + """
systemctl start notifier; echo "start=$?"
test -e /run/notifier.before-ready && echo ready-file-exists
systemctl is-active notifier
systemctl status notifier | grep Status:
systemctl stop notifier
systemctl start --no-block notifier; echo "no-block=$?"
systemctl is-active notifier
wait_for 5 systemctl is-active notifier && echo became-active
""")
    assert code == 0, out
    assert "start=0\nready-file-exists\nactive\n" in out
    assert 'Status: "serving"' in out
    assert "no-block=0\nactivating\n" in out and "became-active" in out


def test_notify_with_real_etcd(host):
    client, peer = free_port(), free_port()
    data = "/run/etcd-data"  # on the namespace's tmpfs, reachable for User=etcd
    code, out = host(f"""
mkdir -p {data} && chown etcd {data} && chmod 700 {data}
unit /etc/systemd/system/etcd.service.d/lab.conf <<'EOF'
[Service]
Environment=ETCD_DATA_DIR={data}
Environment="DAEMON_ARGS=--listen-client-urls http://127.0.0.1:{client} \\
  --advertise-client-urls http://127.0.0.1:{client} --listen-peer-urls http://127.0.0.1:{peer} \\
  --initial-advertise-peer-urls http://127.0.0.1:{peer} --initial-cluster %H=http://127.0.0.1:{peer}"
EOF
systemctl start etcd; echo "start=$?"
systemctl is-active etcd || journalctl -u etcd
ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:{client} endpoint health
ps -o user= -p "$(systemctl show -p MainPID --value etcd)"
systemctl stop etcd; echo "stop=$?"
systemctl is-active etcd || true
""", timeout=40)
    assert code == 0, out
    assert "start=0\nactive\n" in out and "is healthy" in out
    assert "\netcd\n" in out and "stop=0\ninactive" in out


def test_forking_nginx_with_reload(host):
    port = free_port()
    conf = (f"pid /run/nginx.pid; error_log /var/log/nginx-error.log; "
            f"events {{}} http {{ access_log off; server {{ listen 127.0.0.1:{port}; "
            f"return 200 '%s'; }} }}")
    code, out = host(f"""
mount -t tmpfs tmpfs /etc/nginx
echo "{conf % 'one'}" > /etc/nginx/nginx.conf
systemctl start nginx; echo "start=$?"
systemctl is-active nginx
before=$(systemctl show -p MainPID --value nginx)
echo "pidfile=$(cat /run/nginx.pid) main=$before"
echo "got=$(http {port})"
echo "{conf % 'two'}" > /etc/nginx/nginx.conf
systemctl reload nginx; echo "reload=$?"
wait_for 5 sh -c '[ "$(http {port})" = two ]'
echo "got=$(http {port}) main=$(systemctl show -p MainPID --value nginx)"
systemctl stop nginx; echo "stop=$?"
systemctl is-active nginx
pgrep -x nginx || echo no-nginx
""")
    assert code == 0, out
    assert "start=0\nactive\n" in out
    main = out.split("main=")[1].split()[0]
    assert f"pidfile={main} main={main}" in out
    assert "got=one" in out and "reload=0" in out and f"got=two main={main}" in out
    assert "stop=0\ninactive\nno-nginx" in out


def test_haproxy_debian_unit_with_reload(host):
    port = free_port()
    conf = (f"global\\n  log stderr local0\\ndefaults\\n  mode http\\n  timeout client 5s\\n"
            f"  timeout server 5s\\n  timeout connect 5s\\nfrontend web\\n"
            f"  bind 127.0.0.1:{port}\\n  http-request return status 200 content-type "
            f"text/plain string %s\\n")
    code, out = host(f"""
mount -t tmpfs tmpfs /etc/haproxy
printf '{conf % 'one'}' > /etc/haproxy/haproxy.cfg
systemctl start haproxy; echo "start=$?"
systemctl is-active haproxy
main=$(systemctl show -p MainPID --value haproxy)
echo "got=$(http {port})"
printf '{conf % 'two'}' > /etc/haproxy/haproxy.cfg
systemctl reload haproxy; echo "reload=$?"
wait_for 5 sh -c '[ "$(http {port})" = two ]'
echo "got=$(http {port}) same-main=$([ "$main" = "$(systemctl show -p MainPID --value haproxy)" ] && echo yes)"
systemctl stop haproxy; echo "stop=$?"
systemctl is-active haproxy
pgrep -x haproxy || echo no-haproxy
""")
    assert code == 0, out
    assert "start=0\nactive\n" in out and "got=one" in out and "reload=0" in out
    assert "got=two same-main=yes" in out
    assert "stop=0\ninactive\nno-haproxy" in out


def test_kill_mode_spares_setsid_processes(host):
    code, out = host("""
for mode in control-group process; do
unit /etc/systemd/system/family-$mode.service <<EOF
[Service]
KillMode=$mode
ExecStart=/bin/sh -c 'setsid sleep 1001 & (sleep 1004 &); sleep 1002 & exec sleep 1003'
EOF
systemctl start family-$mode
wait_for 5 pgrep -f '^sleep 1002'
wait_for 5 pgrep -f '^sleep 1004'
systemctl stop family-$mode; echo "stop-$mode=$?"
echo "$mode: $(pgrep -fc '^sleep 1001') $(pgrep -fc '^sleep 1002') $(pgrep -fc '^sleep 1003') $(pgrep -fc '^sleep 1004')"
pkill -f '^sleep 100[124]'; sleep 0.2
done
""")
    assert code == 0, out
    # control-group kills the main process and its group, the orphan the supervisor adopted
    # (1004) too, never a setsid'd session; process kills the main process only.
    assert "control-group: 1 0 0 0" in out and "process: 1 1 0 1" in out


def test_failing_exec_start_pre(host):
    code, out = host("""
unit /etc/systemd/system/broken.service <<'EOF'
[Service]
ExecStartPre=-/bin/false
ExecStartPre=/bin/sh -c 'echo checking; exit 3'
ExecStart=/bin/sh -c 'echo should not run; exec sleep 1000'
EOF
systemctl start broken; echo "start=$?"
systemctl is-failed broken; echo "is-failed=$?"
systemctl is-active broken; echo "is-active=$?"
journalctl -u broken
""")
    assert code == 0, out
    assert ('Job for broken.service failed because the control process exited with error code.'
            '\nSee "systemctl status broken.service"') in out
    assert "start=1" in out and "failed\nis-failed=0" in out and "failed\nis-active=3" in out
    assert "checking" in out and "should not run" not in out


def test_drop_in_overrides_exec_start_after_daemon_reload(host):
    code, out = host("""
unit /run/systemd/system/layered.service <<'EOF'
[Service]
ExecStart=/bin/sh -c 'echo base; exec sleep 1000'
EOF
unit /etc/systemd/system/layered.service.d/10-override.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/bin/sh -c 'echo first override; exec sleep 1000'
EOF
systemctl start layered
systemctl status layered | grep -A1 Drop-In
unit /etc/systemd/system/layered.service.d/20-later.conf <<'EOF'
[Service]
# a later drop-in wins
ExecStart=
ExecStart=/bin/sh -c 'echo second \\
  override; exec sleep 1000'
EOF
systemctl show -p NeedDaemonReload layered
systemctl restart layered
systemctl daemon-reload
systemctl show -p NeedDaemonReload layered
systemctl restart layered
sleep 0.3
journalctl -u layered
""")
    assert code == 0, out
    assert "Drop-In: /etc/systemd/system/layered.service.d/10-override.conf" in out
    assert "NeedDaemonReload=yes" in out and "changed on disk" in out
    assert "NeedDaemonReload=no" in out
    log = [line.split(": ", 1)[1] for line in out.splitlines() if " layered: " in line]
    assert log == ["first override", "first override", "second override"], out
    assert "base" not in log


def test_daemon_reload_does_not_wait_for_a_unit_that_never_starts(host):
    # a removed etcd member's unit loops between a failing start and its restart; systemd
    # answers daemon-reload at once all the same (a sweep's resume hung 300 s on the stand-in)
    code, out = host("""
unit /etc/systemd/system/stuck.service <<'EOF'
[Service]
ExecStartPre=/bin/sleep 1000
ExecStart=/bin/sleep 1000
Restart=always
EOF
systemctl start --no-block stuck
wait_for 5 sh -c '[ "$(systemctl is-active stuck)" = activating ]'
echo "# changed" >> /etc/systemd/system/stuck.service
systemctl show -p NeedDaemonReload stuck
timeout 5 systemctl daemon-reload; echo "daemon-reload=$?"
systemctl show -p NeedDaemonReload stuck
systemctl is-active stuck
systemctl stop stuck; echo "stop=$?"
""")
    assert code == 0, out
    assert "NeedDaemonReload=yes\ndaemon-reload=0\nNeedDaemonReload=no\nactivating\nstop=0" in out, out


def test_unmet_condition_and_dead_supervisor(host):
    code, out = host(SLEEPER + """
unit /etc/systemd/system/conditional.service <<'EOF'
[Unit]
ConditionFileNotEmpty=/etc/keepalived/nothing-here.conf
[Service]
ExecStart=/bin/sleep 1000
EOF
systemctl start conditional; echo "conditional=$?"
systemctl is-active conditional
systemctl start sleeper
supervisor=$(python3 -c 'import marshal; print(marshal.load(open("/run/kubeha-systemd/sleeper.service.state", "rb"))["supervisor_pid"])')
kill -9 "$supervisor"; sleep 0.2
systemctl is-active sleeper; echo "after-supervisor-death=$?"
""")
    assert code == 0, out
    assert "conditional=0\ninactive\n" in out
    assert "inactive\nafter-supervisor-death=3" in out
