"""containerd dies with the test process that started it, also when that process gets a `kill -9` and never
runs close(): tests/support/containerd.py gives it the parent-death signal SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.containerd import PRIVATE, Containerd, alive, release

ROOT = Path(__file__).resolve().parents[2]
# The test process in small: starts containerd on the node the arguments describe (the pytest process owns
# that node and cleans up after it), prints containerd's pid and waits to be killed.
CHILD = """import json, sys, time, types
from pathlib import Path
from tests.support.containerd import Containerd
given = json.loads(sys.argv[1])
node = types.SimpleNamespace(id=given["id"], netns=given["netns"], dir=Path(given["dir"]),
                             bin_dir=Path(given["bin_dir"]), conf_dir=Path(given["conf_dir"]))
runtime = Containerd(node)
runtime.start()
print(runtime.process.pid, flush=True)
time.sleep(600)
"""


def started_at(pid: int) -> str:
    """The kernel's start time of pid, which tells it from a later process given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def test_containerd_dies_with_a_killed_test_process() -> None:
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (network and mount namespaces, cgroups, containerd)")
    chosen = release()
    with chosen.node() as node:
        chosen.write_primary(node)
        runtime = Containerd(node)  # the child's containerd as this process sees it: its dir, socket, cgroups
        described = {"id": node.id, "netns": node.netns, "dir": str(node.dir), "bin_dir": str(node.bin_dir),
                     "conf_dir": str(node.conf_dir)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(described)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pid, start_time = 0, ""
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip().isdigit(), f"the child did not start containerd: {child.communicate()[1][-4000:]}"
            pid = int(line)
            start_time = started_at(pid)
            assert Path(os.readlink(f"/proc/{pid}/exe")).name == "containerd"
            assert runtime.socket.exists()

            child.send_signal(signal.SIGKILL)
            child.wait()
            killed = time.monotonic()
            while alive(pid) and started_at(pid) == start_time and time.monotonic() - killed < 5:
                time.sleep(0.02)
            assert not (alive(pid) and started_at(pid) == start_time), "containerd outlived its test process"
            print(f"containerd gone {time.monotonic() - killed:.3f} s after the kill -9 of its test process")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if pid and alive(pid) and started_at(pid) == start_time:
                os.kill(pid, signal.SIGKILL)
            runtime.close()  # shims, cgroups, mounts and files of the child's containerd
        assert not runtime.dir.exists()


def test_containerd_is_not_started_for_a_test_process_that_is_gone() -> None:
    """PRIVATE runs nothing unless its parent is the owner it is given: a test process killed before setpriv
    set the death signal leaves no containerd. Run in a mount namespace of its own, as containerd's start
    runs it, so that the tmpfs it would mount without the check stays there."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount namespace)")
    with tempfile.TemporaryDirectory(prefix="mgwt-private-") as scratch:
        command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PRIVATE, "private"]
        gone = subprocess.run([*command, "1", scratch, "--", "true"], capture_output=True, text=True)
        assert gone.returncode == 70, gone
        ours = subprocess.run([*command, str(os.getpid()), scratch, "--", "true"], capture_output=True, text=True)
        assert ours.returncode == 0, ours
