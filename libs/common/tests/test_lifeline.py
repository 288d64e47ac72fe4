"""keelson.lifeline: a worker stops when its main process dies, and is killed if it lingers."""

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from keelson_dev.testing import eventually

# A worker that ties itself to a parent (`-`: its own) and then waits; SIGUSR1 only
# leaves a note.
_WORKER = """
import os, signal, sys, time
from pathlib import Path
from keelson.lifeline import tie_to_parent

note = Path(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda *_: note.write_text("stop asked"))
parent = os.getppid() if sys.argv[2] == "-" else int(sys.argv[2])
tie_to_parent(parent, stop_signal=int(sys.argv[3]), grace=float(sys.argv[4]))
print(os.getpid(), flush=True)
while True:
    time.sleep(1)
"""

# A main process that starts the worker, says its pid, and waits to be killed.
_MAIN = """
import subprocess, sys, time
command = [sys.executable, "-c", sys.argv[1], *sys.argv[2:]]
worker = subprocess.Popen(command, stdout=subprocess.PIPE)
print(worker.stdout.readline().decode().strip(), flush=True)
while True:
    time.sleep(1)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_worker_stops_when_its_main_process_is_killed(tmp_path: Path) -> None:
    note = tmp_path / "note"
    main = subprocess.Popen(
        [sys.executable, "-c", _MAIN, _WORKER, str(note), "-", str(int(signal.SIGTERM)), "30"],
        stdout=subprocess.PIPE,
    )
    try:
        assert main.stdout is not None
        worker = int(main.stdout.readline())
        assert not _gone(worker)
        main.kill()
        main.wait(10)
        await eventually(lambda: _gone(worker), timeout=10, interval=0.05)
    finally:
        main.kill()
        main.wait()


async def test_a_worker_whose_parent_is_already_gone_is_asked_then_killed(
    tmp_path: Path,
) -> None:
    # The parent named is not this process's parent: as if it had died before the call.
    # The worker only notes the stop signal, so the grace runs out and SIGKILL follows.
    note = tmp_path / "note"
    command = [sys.executable, "-c", _WORKER, str(note), "1", str(int(signal.SIGUSR1)), "0.5"]
    worker = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert worker.wait(30) == -signal.SIGKILL
    finally:
        worker.kill()
        worker.wait()
    assert note.read_text() == "stop asked"
