"""A signal that the kernel hands to a thread other than main still stops the process: a lab
stand-in on SIGTERM, `kubeha probe` on Ctrl-C (Python runs handlers only in the main thread,
and a main thread blocked in a lock or a long sleep is not woken by another thread's signal)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# from here on, only the other thread can receive the signal; "waiting" says it may come
OTHER_THREAD = """
import signal, threading, time
threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
"""
STANDIN = """
from kubeha.lab.standins.common import start_standin
_, _, stopping = start_standin("test", [], {})
""" + OTHER_THREAD + """
print("waiting", flush=True)
stopping.wait()
"""
PROBE_WAIT = """
from kubeha.cli.probe import _wait
""" + OTHER_THREAD + """
try:
    print("waiting", flush=True)  # in the try: a loaded machine may run the handler at once
    _wait(None)
except KeyboardInterrupt:
    print("stopping", flush=True)
"""


@pytest.mark.parametrize(("child", "sent", "said"), [
    (STANDIN, signal.SIGTERM, "received SIGTERM, stopping"),
    (PROBE_WAIT, signal.SIGINT, "stopping"),
], ids=["stand-in-sigterm", "probe-ctrl-c"])
def test_a_signal_received_by_another_thread_stops_the_main_thread(child, sent, said):
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "waiting"
        process.send_signal(sent)
        assert process.wait(timeout=10) == 0
        assert said in process.stdout.read()
    finally:
        process.kill()
        process.wait()
