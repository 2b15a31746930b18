"""The node tier's ground: containerd's CRI plugin makes pods on the plain bridge conflist (no plugin of ours
in the chain), runs containers from the locally built pause image with the kubelet's settings, tears pods
down, and its harness leaves nothing behind. Nothing is mocked: the CRI client plays the kubelet's part.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import images
from tests.support.containerd import Containerd, alive, release
from tests.support.cri import CriError, RuntimeClient
from tests.support.node import SUBNET4, Node, wait_for


def container(name: str, command: list[str], **fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "image": {"image": images.PAUSE}, "command": command,
            "log_path": f"{name}.log", **fields}


def run_pod(containerd: Containerd, name: str, **options: Any) -> tuple[str, dict[str, Any]]:
    config = containerd.pod_config(name, **options)
    started = time.monotonic()
    pod_id = containerd.runtime.run_pod_sandbox(config)
    print(f"RunPodSandbox {name}: {time.monotonic() - started:.3f} s")
    return pod_id, config


def start(containerd: Containerd, pod_id: str, pod: dict[str, Any], config: dict[str, Any]) -> str:
    container_id = containerd.runtime.create_container(pod_id, config, pod)
    containerd.runtime.start_container(container_id)
    return container_id


def reserved(node: Node, ip: str) -> bool:
    """host-local's reservation of ip (the bridge conflist's IPAM keeps it under node.dir/ipam)."""
    return (node.dir / "ipam" / "mgw-test" / ip).exists()


def test_our_plugin_is_not_installed_until_an_installer_puts_it(containerd: Containerd) -> None:
    assert not (containerd.node.bin_dir / "microgateway-cni").exists()
    assert (containerd.node.bin_dir / "bridge").exists()
    print(f"containerd start: {containerd.start_seconds:.3f} s")


def test_pod_gets_an_address_from_the_bridge(containerd: Containerd) -> None:
    pod_id, _ = run_pod(containerd, "address")
    status = containerd.runtime.pod_sandbox_status(pod_id)
    assert status["state"] == "SANDBOX_READY"
    ip = status["network"]["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET4)
    assert reserved(containerd.node, ip)
    assert [pod["id"] for pod in containerd.runtime.list_pod_sandbox(label_selector={
        "io.kubernetes.pod.name": "address"})] == [pod_id]


def test_container_runs_and_exec_sync_reaches_it(containerd: Containerd) -> None:
    pod_id, pod = run_pod(containerd, "exec")
    ip = containerd.runtime.pod_sandbox_status(pod_id)["network"]["ip"]
    app = start(containerd, pod_id, pod, container("app", ["/bin/sh", "-c", "echo started; exec sleep 3600"]))

    assert containerd.runtime.container_status(app)["state"] == "CONTAINER_RUNNING"
    code, out, _ = containerd.runtime.exec_sync(app, ["/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0"])
    assert code == 0 and f"inet {ip}/24" in out
    exit_three = ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
    assert containerd.runtime.exec_sync(app, exit_three) == (3, "out\n", "err\n")
    assert wait_for(lambda: containerd.runtime.container_logs(app) == "started\n")
    assert [c["id"] for c in containerd.runtime.list_containers(pod_sandbox_id=pod_id)] == [app]


def test_the_kubelets_container_settings_reach_runc(containerd: Containerd) -> None:
    """Every field the node tier translates from a manifest arrives in runc's spec and in the process:
    the proto's field numbers are the CRI's."""
    shared = containerd.dir / "shared"
    shared.mkdir()
    pod_id, pod = run_pod(containerd, "settings")
    config = container(
        "installer", ["/bin/sh", "-c", "exec sleep 3600"], working_dir="/bin",
        envs=[{"key": "NODE_NAME", "value": "node-1"}],
        mounts=[{"container_path": "/host/data", "host_path": str(shared), "readonly": True,
                 "propagation": "PROPAGATION_PRIVATE"}],
        labels={"io.kubernetes.container.name": "installer"}, annotations={"example/annotation": "yes"},
        linux={"security_context": {
            "capabilities": {"drop_capabilities": ["ALL"], "add_capabilities": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]},
            "run_as_user": {"value": 1000}, "run_as_group": {"value": 1000}, "supplemental_groups": [2000],
            "readonly_rootfs": True, "no_new_privs": True}})
    app = start(containerd, pod_id, pod, config)

    status = containerd.runtime.container_status(app, verbose=True)
    assert status["labels"]["io.kubernetes.container.name"] == "installer"
    assert status["annotations"]["example/annotation"] == "yes"
    spec = status["info"]["info"]["runtimeSpec"]
    process = spec["process"]
    assert (process["user"]["uid"], process["user"]["gid"]) == (1000, 1000)
    assert 2000 in process["user"]["additionalGids"]
    assert process["noNewPrivileges"] is True
    assert sorted(process["capabilities"]["bounding"]) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
    assert "NODE_NAME=node-1" in process["env"] and process["cwd"] == "/bin"
    assert spec["root"]["readonly"] is True
    mount = next(m for m in spec["mounts"] if m["destination"] == "/host/data")
    assert mount["source"] == str(shared) and {"ro", "rprivate"} <= set(mount["options"])
    assert spec["linux"]["cgroupsPath"].startswith(containerd.cgroup_parent + "/")

    assert containerd.runtime.exec_sync(app, ["/bin/busybox", "id", "-u"])[1] == "1000\n"
    assert containerd.runtime.exec_sync(app, ["/bin/busybox", "touch", "/root-file"])[0] != 0
    assert containerd.runtime.exec_sync(app, ["/bin/busybox", "touch", "/host/data/file"])[0] != 0


def test_host_network_pod_shares_the_node_netns(containerd: Containerd) -> None:
    pod_id, pod = run_pod(containerd, "host-net", host_network=True)
    app = start(containerd, pod_id, pod, container("app", ["/bin/sh", "-c", "exec sleep 3600"]))
    code, inside, _ = containerd.runtime.exec_sync(app, ["/bin/busybox", "cat", "/proc/net/dev"])
    node = containerd.node.exec(containerd.node.netns, ["cat", "/proc/net/dev"]).stdout

    def names(dev: str) -> set[str]:
        return {line.split(":")[0].strip() for line in dev.splitlines()[2:]}

    assert code == 0 and names(inside) == names(node)


def test_stop_and_remove_release_the_netns_and_the_address(containerd: Containerd) -> None:
    pod_id, _ = run_pod(containerd, "teardown")
    status = containerd.runtime.pod_sandbox_status(pod_id, verbose=True)
    ip = status["network"]["ip"]
    netns = next(ns["path"] for ns in status["info"]["info"]["runtimeSpec"]["linux"]["namespaces"]
                 if ns["type"] == "network")
    assert containerd.process is not None
    # The pod netns is a mount in containerd's private mount namespace, not in ours.
    mountinfo = Path(f"/proc/{containerd.process.pid}/mountinfo")

    def mounted() -> bool:
        return f" {netns} " in mountinfo.read_text()

    assert mounted() and reserved(containerd.node, ip)
    containerd.runtime.stop_pod_sandbox(pod_id)
    assert not mounted() and not reserved(containerd.node, ip)
    assert containerd.runtime.pod_sandbox_status(pod_id)["state"] == "SANDBOX_NOTREADY"
    containerd.runtime.remove_pod_sandbox(pod_id)
    assert pod_id not in [pod["id"] for pod in containerd.runtime.list_pod_sandbox()]


def test_what_containerd_puts_on_a_nodes_paths_stays_private(containerd: Containerd) -> None:
    """Where a pod's netns, libcni's result cache and every socket of containerd and its shims go: under
    node.dir or on the tmpfs mounts of containerd's own mount namespace, never on the host's paths (which
    another containerd on this machine may be using)."""
    pod_id, _ = run_pod(containerd, "private")
    status = containerd.runtime.pod_sandbox_status(pod_id, verbose=True)
    netns = next(ns["path"] for ns in status["info"]["info"]["runtimeSpec"]["linux"]["namespaces"]
                 if ns["type"] == "network")
    assert containerd.process is not None
    proc = Path(f"/proc/{containerd.process.pid}")
    mounts = [line.split() for line in (proc / "mountinfo").read_text().splitlines()]
    private = {fields[4]: fields[fields.index("-") + 2] for fields in mounts
               if fields[4] in ("/run/containerd", "/var/lib/cni")}
    # Sockets bound in the node's netns: containerd's, its shims', nothing else runs there.
    sockets = [line.split()[-1] for line in (proc / "net" / "unix").read_text().splitlines()[1:]
               if line.split()[-1].startswith("/")]
    cached = [path.name for path in (proc / "root" / "var/lib/cni/results").iterdir()]

    assert private == {"/run/containerd": "mgwt-containerd", "/var/lib/cni": "mgwt-containerd"}
    assert under(netns, containerd.state), netns
    assert sockets and all(under(s, containerd.dir) or s.startswith("/run/containerd/s/") for s in sockets), sockets
    assert any(pod_id in name for name in cached), cached
    host_cache = Path("/var/lib/cni/results")
    assert not any(pod_id in path.name for path in (host_cache.iterdir() if host_cache.is_dir() else []))


def test_containerd_logged_no_error(containerd: Containerd) -> None:
    assert containerd.errors() == []


def test_a_failed_call_names_the_method_and_the_grpc_status(tmp_path: Path) -> None:
    with RuntimeClient(tmp_path / "no-runtime.sock", timeout=2) as client, \
            pytest.raises(CriError, match=r"^CRI Version failed: UNAVAILABLE: .*no-runtime.sock") as failure:
        client.version()
    assert failure.value.method == "Version"


def test_a_start_that_fails_says_why_and_leaves_nothing() -> None:
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (network and mount namespaces, cgroups, containerd)")
    with release().node() as node:
        runtime = Containerd(node, snapshotter="no-such-snapshotter")
        with pytest.raises(RuntimeError, match=r"(?s)without its CRI plugin.*no-such-snapshotter"), runtime:
            pytest.fail("containerd's CRI plugin started with a snapshotter that does not exist")
        assert runtime.process is not None and runtime.process.returncode is not None
        assert processes_in(node.dir) == [] and not runtime.dir.exists()


def under(path: str, directory: Path) -> bool:
    return path == str(directory) or path.startswith(f"{directory}/")


def processes_in(directory: Path) -> list[str]:
    """Processes whose working directory or root is under directory."""
    found = []
    for proc in Path("/proc").iterdir():
        for link in ("cwd", "root"):
            try:
                target = os.readlink(proc / link)
            except OSError:
                continue
            if proc.name.isdigit() and under(target, directory):
                found.append(f"{proc.name} ({link} {target})")
    return found


def mounts_under(directory: Path, mountinfo: Path) -> list[str]:
    """Mount points under directory in the mount namespace that mountinfo describes."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    return [point for point in (line.split()[4] for line in lines) if under(point, directory)]


def started_at(pid: int) -> str:
    """The kernel's start time of pid, which tells it from a later process given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def still_running(pid: int, start_time: str) -> bool:
    return alive(pid) and started_at(pid) == start_time


def veths(node: Node) -> list[str]:
    """The node-side ends of pod interfaces: each goes away only when its pod's netns is destroyed."""
    return node.exec(node.netns, ["ip", "-o", "link", "show", "type", "veth"]).stdout.splitlines()


@pytest.mark.parametrize("stop", ["graceful", "containerd-killed"])
def test_close_leaves_no_netns_mount_process_cgroup_or_file(stop: str) -> None:
    """close() after a normal run, and after containerd died with pods running (its shims live on)."""
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (network and mount namespaces, cgroups, containerd)")
    started = time.monotonic()
    chosen = release()
    with chosen.node() as node:
        chosen.write_primary(node)
        runtime = Containerd(node, keep_plugin=False)
        try:
            runtime.start()
            runtime.import_image(images.pause_archive(), images.PAUSE)
            runtime.wait_network_ready()
            pod_id, pod = run_pod(runtime, "left")
            app = start(runtime, pod_id, pod, container("app", ["/bin/sh", "-c", "exec sleep 3600"]))
            pause_pid = runtime.runtime.pod_sandbox_status(pod_id, verbose=True)["info"]["info"]["pid"]
            app_pid = runtime.runtime.container_status(app, verbose=True)["info"]["info"]["pid"]
            pids = {pid: started_at(pid) for pid in (pause_pid, app_pid)}
            assert len(veths(node)) == 1
            assert runtime.process is not None
            if stop == "containerd-killed":
                runtime.process.kill()
                runtime.process.wait()
                assert still_running(app_pid, pids[app_pid]) and processes_in(node.dir)
        finally:
            runtime.close()

        assert mounts_under(node.dir, Path("/proc/self/mountinfo")) == []
        assert [m for info in Path("/proc").glob("[0-9]*/mountinfo") for m in mounts_under(node.dir, info)] == []
        assert processes_in(node.dir) == []
        assert not [pid for pid, start_time in pids.items() if still_running(pid, start_time)]
        # A netns is destroyed asynchronously once its last user is gone.
        assert wait_for(lambda: veths(node) == [], timeout=10), veths(node)
        assert not [hierarchy for hierarchy in Path("/sys/fs/cgroup").iterdir()
                    if (hierarchy / runtime.cgroup_parent.lstrip("/")).exists()]
        assert not runtime.dir.exists()
    print(f"whole lifecycle ({stop}): {time.monotonic() - started:.3f} s")
