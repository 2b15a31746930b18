"""The node tier's own images (tests/support/images.py): what a runtime needs from them, without a runtime.

Each image is unpacked and its programs run in a chroot of its layers with private PID, mount and
network namespaces, so nothing of the host's file system is used and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images, oci

# The image's program is PID 1 of its namespace, as a sandbox's is (`exec` keeps the PID), as the image's
# user, with the /dev/null every runtime provides.
AS_INIT = '''mkdir -p "$0/dev" && touch "$0/dev/null" && mount --bind /dev/null "$0/dev/null"
exec chroot --userspec="$1" "$0" "${@:2}"'''
# The stand-in app listens, then the client connects to it over the namespace's loopback.
APP_AND_CLIENT = """ip link set lo up
chroot "$0" "$@" > "$0/tmp/app.out" 2>&1 &
for _ in $(seq 100); do grep -q ready "$0/tmp/app.out" && break; sleep 0.1; done
exec chroot "$0" {client}"""


@pytest.fixture
def unpacked() -> Iterator[Path]:
    """An empty root directory as a runtime makes it (0755: the image's user must be able to enter it)."""
    with tempfile.TemporaryDirectory(prefix="mgw-images-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir(mode=0o755)
        yield rootfs


def namespaced(script: str, rootfs: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "/bin/bash", "-c",
                             script, str(rootfs), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def config_env(config: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["config"].get("Env", []))


def namespace_init(outer: subprocess.Popen[str]) -> int | None:
    """The host PID of the namespace's PID 1: unshare's only child."""
    with contextlib.suppress(OSError, IndexError):
        return int(Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()[0])
    return None


def sleeping_init(outer: subprocess.Popen[str], rootfs: Path) -> int:
    """PID 1 once it runs the image's program and has started its first child (its trap is set by then)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = namespace_init(outer)
        with contextlib.suppress(OSError):
            if (pid and os.readlink(f"/proc/{pid}/exe").startswith(str(rootfs))
                    and Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
                return pid
        time.sleep(0.05)
    raise TimeoutError("the pause program did not start sleeping")


def test_pause_image_sleeps_as_pid_1_and_stops_at_once_on_sigterm(unpacked):
    archive = images.pause_archive()
    assert oci.read_index(archive)["manifests"][0]["annotations"][oci.NAME_ANNOTATION] == images.PAUSE
    _manifest, config = oci.read_image(archive)
    oci.unpack(archive, unpacked)
    pause = namespaced(AS_INIT, unpacked, [config["config"]["User"], *config["config"]["Entrypoint"]],
                       config_env(config))
    try:
        pid = sleeping_init(pause, unpacked)
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert pause.wait(timeout=5) == 0, pause.communicate()
        assert time.monotonic() - started < 1, "a runtime would wait for its stop timeout, then kill"
    finally:
        if pause.poll() is None and (init := namespace_init(pause)):
            os.kill(init, signal.SIGKILL)  # unshare's kill-on-exit does not outlive the change of user
        pause.kill()
        pause.communicate()


def test_standins_image_runs_the_programs_on_its_own_python(unpacked):
    archive = images.standins_archive()
    assert oci.read_index(archive)["manifests"][0]["annotations"][oci.NAME_ANNOTATION] == images.STANDINS
    _manifest, config = oci.read_image(archive)
    oci.unpack(archive, unpacked)
    assert not (unpacked / "usr/bin/apt-get").exists(), "nothing installs packages in a pod"
    assert (unpacked / os.readlink(unpacked / "usr/local/bin/nc")[1:]).is_file()
    client = " ".join(images.client_command("127.0.0.1:8080", "127.0.0.1:8081"))
    run = namespaced(APP_AND_CLIENT.format(client=client), unpacked,
                     images.standin_command("app", name="web", ports=[8080]), config_env(config))
    try:
        out, err = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 0, out + err
    replies = json.loads(out)
    assert replies["127.0.0.1:8080"] == "app=web port=8080"
    assert replies["127.0.0.1:8081"].startswith("error: ConnectionRefusedError"), replies


def test_standin_command_takes_only_the_programs_options():
    assert images.standin_command("engine", name="web", port=13378, forward=[8080, 8443], families="4,6") == [
        images.PYTHON, f"{images.PROGRAMS_DIR}/standins.py", "engine", "--name", "web", "--port", "13378",
        "--forward", "8080,8443", "--families", "4,6"]
    with pytest.raises(TypeError):
        images.standin_command("app", name="web", listen=8080)
    with pytest.raises(ValueError):
        images.standin_command("sidecar", name="web")
