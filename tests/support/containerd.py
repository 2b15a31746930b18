"""containerd with its CRI plugin and runc, run for one Node: pods made the way the kubelet has them made.

Two releases: containerd 2 (RELEASE, the node tier's default: what current Kubernetes nodes run, and the
first to call the CNI plugins' STATUS), built from its Go module and found through tests/support/components,
and Debian's 1.6, which never calls STATUS, for the few tests that show that difference.

containerd runs inside the node's network namespace and in a mount namespace of its own, where the paths
neither release lets us move (/run/containerd for shim sockets and runc's state, /var/lib/cni for libcni's
result cache) are private: nothing it mounts or writes there reaches the host, and everything in that
namespace goes away with its last process. Root, state, socket, config, log and the pods' cgroup parent are
this instance's own, under node.dir, so concurrent runs never share anything. close() removes all of it,
also after a start that failed halfway.

containerd gets the parent-death signal SIGKILL (setpriv --pdeathsig), so it dies with the test process even
after a `kill -9`, when close() never runs. Its shims do not: they run on (as designed, for a containerd
restart), re-parented to init, until close() or a sweep finds them by our socket path on their command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tests.support.components import binary
from tests.support.cri import CriError, RuntimeClient
from tests.support.images import PAUSE
from tests.support.lifetime import Started
from tests.support.node import SYSTEM_PLUGINS, Node

CGROUP_ROOT = Path("/sys/fs/cgroup")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 30.0
# Where containerd, the plugins it runs and the hostPath volumes of its pods see the node's directories:
# the paths of a real node, so the installer's defaults and the manifests work unchanged.
NODE_PATHS = {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d", "log_dir": "/var/log"}
# Run by root as `sh -c PRIVATE private <owner> <dir> <source:target>... -- <command...>` inside the new mount
# namespace. Exits at once unless its parent is still <owner> (the test process, which may have died before
# setpriv set the death signal). Makes the paths containerd fixes private (a tmpfs over each), and shows each source
# directory of the test node at the path a real node has it (/etc/cni/net.d, /opt/cni/bin, /var/log):
# a target that does not exist on the host is made in an overlay over its nearest existing ancestor (upper
# layer under <dir>), so nothing is created on the host.
PRIVATE = """set -e
[ "$PPID" = "$1" ] || exit 70
dir=$2
shift 2
n=0
reveal() {
  if [ ! -d "$1" ]; then
    n=$((n + 1))
    above=$(dirname "$1")
    while [ ! -d "$above" ]; do above=$(dirname "$above"); done
    mkdir -p "$dir/overlay/$n/upper" "$dir/overlay/$n/work"
    mount -t overlay -o "lowerdir=$above,upperdir=$dir/overlay/$n/upper,workdir=$dir/overlay/$n/work" mgwt-node "$above"
    mkdir -p "$1"
  fi
}
for fixed in /run/containerd /var/lib/cni; do
  reveal "$fixed"
  mount -t tmpfs -o mode=0711 mgwt-containerd "$fixed"
done
while [ "$1" != -- ]; do
  reveal "${1#*:}"
  mount --bind "${1%%:*}" "${1#*:}"
  shift
done
shift
exec "$@"
"""


def _config_1_6(containerd: Containerd) -> str:
    """Config version 2: without restrict_oom_score_adj runc fails to set the sandbox's oom_score_adj here
    (root lacks CAP_SYS_RESOURCE), saying only "can't get final child's PID from pipe: EOF"."""
    cri = '"io.containerd.grpc.v1.cri"'
    return f"""version = 2
oom_score = 0

[grpc]
  address = "{containerd.socket}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{containerd.dir / 'opt'}"
  [plugins.{cri}]
    sandbox_image = "{PAUSE}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins.{cri}.containerd]
      snapshotter = "{containerd.snapshotter}"
      default_runtime_name = "runc"
      [plugins.{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.{cri}.containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins.{cri}.cni]
      bin_dir = "{NODE_PATHS['bin_dir']}"
      conf_dir = "{NODE_PATHS['conf_dir']}"
      max_conf_num = 1
"""


def _config_2(containerd: Containerd) -> str:
    """Config version 3 (2.0 and later read it; 2.4 migrates it to version 4 and logs a warning). What 1.6
    needs holds here too (restrict_oom_score_adj, netns under the state dir); the CRI plugin's settings are
    split into images and runtime, the sandbox image is pinned (never garbage-collected), and the rest
    keeps containerd off the host: NRI off (it would listen on /var/run/nri/nri.sock), CDI specs from a
    directory of ours (an empty list means the host's /etc/cdi and /var/run/cdi). `ctr images import`
    goes through the transfer service, which unpacks only for the snapshotters it is told (by default
    overlayfs)."""
    images, runtime = '"io.containerd.cri.v1.images"', '"io.containerd.cri.v1.runtime"'
    return f"""version = 3
oom_score = 0

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{containerd.dir / 'opt'}"
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
  [plugins."io.containerd.transfer.v1.local"]
    [[plugins."io.containerd.transfer.v1.local".unpack_config]]
      platform = "linux/amd64"
      snapshotter = "{containerd.snapshotter}"
      differ = "walking"
  [plugins.{images}]
    snapshotter = "{containerd.snapshotter}"
    [plugins.{images}.pinned_images]
      sandbox = "{PAUSE}"
  [plugins.{runtime}]
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = ["{containerd.dir / 'cdi'}"]
    [plugins.{runtime}.containerd]
      default_runtime_name = "runc"
      [plugins.{runtime}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.{runtime}.containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins.{runtime}.cni]
      bin_dirs = ["{NODE_PATHS['bin_dir']}"]
      conf_dir = "{NODE_PATHS['conf_dir']}"
      max_conf_num = 1
"""


V1_6, V2 = "1.6", "2"
RELEASE = V2  # the node tier's and the demo's


@dataclass(frozen=True)
class Release:
    """What one containerd release takes from this machine and how a node is set up for it."""

    name: str
    containerd: str
    ctr: str
    shim: str | None  # containerd-shim-runc-v2, first on containerd's PATH; None: Debian's, on PATH anyway
    config: Callable[[Containerd], str]
    cni_plugins: Path  # bridge, host-local, loopback, portmap for the node's bin dir
    cni_version: str  # the primary conflist's: 1.1.0 makes containerd 2 call STATUS

    def node(self) -> Node:
        """A Node whose bin dir holds this release's CNI plugins."""
        return Node(cni_plugins=self.cni_plugins)

    def write_primary(self, node: Node, name: str = "10-mgw.conflist") -> Path:
        """The primary CNI's conflist (bridge alone) in this release's cniVersion."""
        return node.write_conflist(cni_version=self.cni_version, chained=False, name=name)


def release(name: str = RELEASE) -> Release:
    """containerd 2: the Go-built components, whose CNI plugins answer STATUS (spec 1.1.0). 1.6: Debian's
    containerd and plugins (1.1.1, spec 1.0.0 at most; 1.6 never calls STATUS)."""
    if name == V2:
        shim = binary("containerd-shim-runc-v2")
        return Release(V2, binary("containerd"), binary("ctr"), shim, _config_2, Path(binary("bridge")).parent,
                       "1.1.0")
    if name == V1_6:
        return Release(V1_6, "containerd", "ctr", None, _config_1_6, SYSTEM_PLUGINS, "1.0.0")
    raise ValueError(f"containerd release {name!r}: expected {V2!r} or {V1_6!r}")


class Containerd(Started):
    """containerd (release: V2 or V1_6) + runc for node, started by the context manager.

    keep_plugin=False removes the link to our plugin that Node.start puts in node.bin_dir, for tests in
    which the installer is the one to put it there.
    """

    def __init__(self, node: Node, snapshotter: str = "native", keep_plugin: bool = True,
                 release_name: str = RELEASE, extra_mounts: dict[Path, str] | None = None) -> None:
        """extra_mounts: more of the node's directories, bound at the path given (the mount namespace's view)."""
        self.node = node
        self.extra_mounts = dict(extra_mounts or {})
        self.release = release(release_name)
        self.snapshotter = snapshotter
        self.keep_plugin = keep_plugin
        self.dir = node.dir / "containerd"
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.socket = self.dir / "containerd.sock"
        self.config = self.dir / "config.toml"
        self.log = self.dir / "containerd.log"
        self.pods_log_dir = self.dir / "pods"
        self.log_dir = self.dir / "var-log"  # the node's /var/log, where the plugin logs by default
        self.bin = self.dir / "bin"  # first on containerd's PATH: the release's shim
        self.cgroup_parent = f"/mgwt-{node.id}-pods"
        self.process: subprocess.Popen[bytes] | None = None
        self.runtime = RuntimeClient(self.socket)
        self.start_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start containerd and wait until its CRI plugin answers.

        Only from the main thread: the parent-death signal follows the thread that forks containerd, so one
        started from another thread would be killed when that thread ends.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("start containerd from the main thread: its parent-death signal follows the thread "
                               "that forks it")
        if not self.keep_plugin:
            (self.node.bin_dir / "microgateway-cni").unlink(missing_ok=True)
        for sub in (self.root, self.state, self.pods_log_dir, self.log_dir, self.bin, self.dir / "cdi"):
            sub.mkdir(parents=True)
        if self.release.shim is not None:
            (self.bin / "containerd-shim-runc-v2").symlink_to(self.release.shim)
        self.config.write_text(self.release.config(self))
        started = time.monotonic()
        with self.log.open("ab") as log:
            # One process from setpriv to containerd (each execs the next), so the death signal set first
            # holds for containerd and self.process.pid is containerd's.
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--",
                 "nsenter", f"--net=/run/netns/{self.node.netns}", "--",
                 "unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c", PRIVATE, "private", str(os.getpid()), str(self.dir), *self._node_paths(), "--",
                 self.release.containerd, "--config", str(self.config), "--root", str(self.root),
                 "--state", str(self.state), "--address", str(self.socket), "--log-level", "info"],
                cwd=self.dir, env={"PATH": self.path}, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._wait_until_serving(started + START_TIMEOUT)
        self.start_seconds = time.monotonic() - started

    def _wait_until_serving(self, deadline: float) -> None:
        """Until the CRI plugin answers; fails at once when containerd exits or runs without the plugin
        (it serves the rest of its API then, and logs why the plugin did not load)."""
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited ({self.process.returncode}) while starting:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    self.runtime.version()
                    return
                except CriError as error:
                    if error.code == grpc.StatusCode.UNIMPLEMENTED:
                        why = self.log_lines("failed to load plugin", "io.containerd.grpc.v1.cri")
                        raise RuntimeError(f"containerd runs without its CRI plugin: {error}\n{why}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"containerd's CRI did not answer: {error}\n{self.log_tail()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not open {self.socket}\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def path(self) -> str:
        """containerd's PATH, which its shims and the CNI plugins inherit: the release's shim comes first
        (containerd 2 looks it up there before beside its own binary, and Debian's 1.6 shim is on PATH)."""
        return f"{self.bin}:{PATH}"

    def _node_paths(self) -> list[str]:
        sources = {"bin_dir": self.node.bin_dir, "conf_dir": self.node.conf_dir, "log_dir": self.log_dir}
        return [f"{sources[key]}:{target}" for key, target in NODE_PATHS.items()] + [
            f"{source}:{target}" for source, target in self.extra_mounts.items()]

    def close(self) -> None:
        """Remove every pod, stop containerd, kill what outlives it, remove its cgroups and files."""
        if self.process is not None and self.process.poll() is None:
            self._remove_pods()
        self.runtime.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_leftovers()
        self._remove_cgroups()
        for mount in reversed(self.mounts()):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], check=False, capture_output=True)

    def _remove_pods(self) -> None:
        try:
            for sandbox in self.runtime.list_pod_sandbox():
                try:
                    self.runtime.stop_pod_sandbox(sandbox["id"])
                    self.runtime.remove_pod_sandbox(sandbox["id"])
                except CriError:
                    continue
        except CriError:
            return

    def _kill_leftovers(self) -> None:
        """Container processes (by their init.pid and by our cgroups) and shims (by our socket path).

        After a hard stop of containerd its shims live on and ignore SIGTERM, and 1.6 writes no pid
        file for them; their command line names our socket, which no other run shares.
        """
        pids = set()
        for pid_file in self.state.glob("io.containerd.runtime.v2.task/*/*/init.pid"):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if self.cgroup_parent + "/" in _read(Path(f"/proc/{pid}/cgroup")):
                pids.add(pid)
        for cgroup in self._cgroups():
            pids.update(int(pid) for pid in _read(cgroup / "cgroup.procs").split())
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and self._is_our_shim(_read(proc / "cmdline").split("\0")):
                pids.add(int(proc.name))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if alive(pid)}
            time.sleep(0.05)

    def _is_our_shim(self, argv: list[str]) -> bool:
        return "-address" in argv[:-1] and argv[argv.index("-address") + 1] == str(self.socket)

    def _cgroups(self) -> list[Path]:
        """Our cgroup parent and everything below it in every hierarchy, deepest first."""
        found = []
        for hierarchy in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if CGROUP_ROOT.exists() else []:
            top = hierarchy / self.cgroup_parent.lstrip("/")
            if top.is_dir():
                found += [Path(path) for path, _dirs, _files in os.walk(top)]
        return sorted(found, key=lambda path: len(path.parts), reverse=True)

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        for cgroup in self._cgroups():
            while True:
                try:
                    cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    # -- state -------------------------------------------------------------------------------------
    def mounts(self) -> list[str]:
        """Mount points under this instance's directory that the host's mount namespace sees."""
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        return [point for point in points if point == str(self.dir) or point.startswith(f"{self.dir}/")]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(_read(self.log).splitlines()[-lines:])

    def log_lines(self, *texts: str) -> str:
        """The lines of containerd's log that contain every one of texts."""
        return "\n".join(line for line in _read(self.log).splitlines() if all(text in line for text in texts))

    def errors(self) -> list[str]:
        """The lines containerd logged at level error or fatal."""
        return [line for line in _read(self.log).splitlines() if "level=error" in line or "level=fatal" in line]

    def wait_network_ready(self, timeout: float = 10.0) -> None:
        """Wait until the CRI plugin has loaded a CNI configuration from node.conf_dir."""
        deadline = time.monotonic() + timeout
        while not self.runtime.status().get("NetworkReady"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd loaded no CNI config from {self.node.conf_dir}\n{self.log_tail()}")
            time.sleep(0.05)

    def loaded_conflist(self) -> dict[str, Any] | None:
        """The pod network's conflist as the CRI plugin has loaded it (its verbose status)."""
        for network in json.loads(self.runtime.status_info()["cniconfig"]).get("Networks") or []:
            if network["Config"]["Name"] != "cni-loopback":
                return dict(json.loads(network["Config"]["Source"]))
        return None

    def wait_loaded(self, document: dict[str, Any], timeout: float = 10.0) -> None:
        """Until the CRI plugin has loaded document: it reloads after each write to the conf dir, but not at once."""
        deadline = time.monotonic() + timeout
        while self.loaded_conflist() != document:
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd did not load {document}; it holds {self.loaded_conflist()}")
            time.sleep(0.02)

    # -- images ------------------------------------------------------------------------------------
    def import_image(self, archive: Path, name: str, timeout: float = 30.0) -> None:
        """Import an OCI archive with ctr and wait until the CRI plugin lists it (it learns of it by event)."""
        done = subprocess.run([self.release.ctr, "-n", "k8s.io", "--address", str(self.socket), "images", "import",
                               "--snapshotter", self.snapshotter, str(archive)],
                              capture_output=True, text=True, check=False, env={"PATH": PATH})
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import {archive} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout
        while not any(name in image["repo_tags"] for image in self.runtime.list_images()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd's CRI does not list {name} after importing {archive}")
            time.sleep(0.05)

    # -- pods --------------------------------------------------------------------------------------
    def pod_config(self, name: str, namespace: str = "default", *, labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None, host_network: bool = False,
                   **fields: Any) -> dict[str, Any]:
        """A PodSandboxConfig as the kubelet builds one, in this instance's cgroup parent and log directory."""
        uid = str(uuid.uuid4())
        config: dict[str, Any] = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": 0},
            "hostname": "" if host_network else name,
            "log_directory": str(self.pods_log_dir / f"{namespace}_{name}_{uid}"),
            "labels": {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                       "io.kubernetes.pod.uid": uid, **(labels or {})},
            "annotations": dict(annotations or {}),
            "linux": {"cgroup_parent": self.cgroup_parent,
                      "security_context": {"namespace_options": {"network": "NODE" if host_network else "POD",
                                                                 "pid": "CONTAINER"}}},
        }
        config.update(fields)
        return config


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that is not us."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] != "Z"
