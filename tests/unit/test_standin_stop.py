"""A lab stand-in stops on SIGTERM also when the signal lands on a thread other than main."""

from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
import signal, threading, time
from kubeha.lab.standins.common import start_standin
_, _, stopping = start_standin("test", [], {})
threading.Thread(target=lambda: time.sleep(60), daemon=True).start()
# from here on only the other thread can receive SIGTERM, as when many serve connections
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("waiting", flush=True)
stopping.wait()
"""


def test_sigterm_received_by_another_thread_stops_the_main_thread():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "waiting"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
        assert "received SIGTERM, stopping" in child.stderr.read()
    finally:
        child.kill()
        child.wait()
