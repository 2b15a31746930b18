"""The plugin run directly, as a container runtime runs it: for what libcni cannot send (spec 1.1.0
commands, malformed input) and to read the plugin's exact stdout."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.support.node import Node, Pod


def cni_env(pod: Pod, command: str = "ADD") -> dict[str, str]:
    """The CNI_* variables a runtime sets for `command` on this pod."""
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.netns_path,
            "CNI_IFNAME": "eth0", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};"
                                              f"K8S_POD_NAME={pod.name}"}


def exec_plugin(node: Node, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run the plugin in the node netns with a clean environment."""
    plugin = str(node.bin_dir / "microgateway-cni")
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": str(node.bin_dir), **env}
    return subprocess.run(["ip", "netns", "exec", node.netns, plugin], input=stdin, env=full_env,
                          capture_output=True, timeout=60)


def plugin_conf(node: Node, version: str = "1.1.0", **extra: object) -> dict[str, Any]:
    """The plugin's network configuration on its own, as the runtime passes it on stdin."""
    return {"cniVersion": version, "name": "mgw-test", **node.plugin_entry(), **extra}


def cni_error(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The plugin's stdout must be exactly one CNI error object, exit 1, and no traceback anywhere."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert b"Traceback" not in done.stdout + done.stderr
    error: dict[str, Any] = json.loads(done.stdout)
    assert set(error) <= {"cniVersion", "code", "msg", "details"} and {"code", "msg"} <= set(error)
    for line in done.stderr.decode().splitlines():
        json.loads(line)  # logs are JSON lines
    return error
