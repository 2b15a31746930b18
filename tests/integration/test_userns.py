"""Pods with `hostUsers: false`: their netns is owned by a user namespace (docs/design.md, "User
namespaces"). ADD, CHECK and DEL through libcni, with real traffic from processes inside that user
namespace, with no mesh and behind Istio (whose owner-match rules, written from inside the user
namespace, make every table commit from outside it fail).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.istio import istio_rules
from tests.support.node import APP_UID, ENGINE_UID, ISTIO_UID, VALIDATOR_UID, Node, Pod, pod_fixture, run
from tests.support.pods import client_pod, target

PREFIX = "sidecar.microgateway.airlock.com/"
ID_BASE, ID_COUNT = 200000, 65536  # the pod's uids 0..65535 are the node's 200000..265535
# The pod's processes run Debian's interpreter: the virtualenv's may live where no uid of the pod's
# user namespace can reach it (under /root, mode 0700). The stand-ins and the validator's plain path
# need nothing but the standard library and this checkout.
POD_PYTHON = "/usr/bin/python3"


class UsernsPod:
    """A sandbox netns created under `unshare --user --net` and kept by bind mounts, like a runtime
    keeps a `hostUsers: false` pod's, so it outlives the process that made it."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.pod = Pod(name=name, namespace="default", netns=f"mgwt-{node.id}-u{uuid.uuid4().hex[:4]}",
                       container_id=uuid.uuid4().hex)
        self.userns = node.dir / f"{self.pod.netns}.userns"
        self.mounts: list[Path] = []

    def create(self) -> None:
        self.node.dir.chmod(0o755)  # the pod's uids read the lock file and stand-ins' paths below it
        maker = subprocess.Popen(["unshare", "--user", "--net", "--", "sh", "-c", "echo up; exec sleep 30"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert maker.stdout is not None and maker.stdout.readline().strip() == "up"
            for kind in ("uid", "gid"):
                Path(f"/proc/{maker.pid}/{kind}_map").write_text(f"0 {ID_BASE} {ID_COUNT}\n")
            netns_file = Path("/run/netns") / self.pod.netns
            netns_file.parent.mkdir(exist_ok=True)
            for source, mount_point in ((f"/proc/{maker.pid}/ns/net", netns_file),
                                        (f"/proc/{maker.pid}/ns/user", self.userns)):
                mount_point.touch()
                run(["mount", "--bind", source, str(mount_point)])
                self.mounts.append(mount_point)
        finally:
            maker.kill()
            maker.wait()
        self.node.namespaces.append(self.pod.netns)  # `ip netns del` unmounts and removes it on close
        self.node.pods[self.pod.name] = self.pod
        self.inside(["ip", "link", "set", "lo", "up"])

    def close(self) -> None:
        for mount_point in reversed(self.mounts):
            run(["umount", str(mount_point)], check=False)

    def command(self, cmd: list[str], uid: int = 0) -> list[str]:
        """cmd run by a process of the pod: inside its user namespace, as `uid` there."""
        return [*self.node.reveal(), "nsenter", f"--user={self.userns}", "--",
                "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *cmd]

    def inside(self, cmd: list[str], uid: int = 0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.node.exec(self.pod.netns, self.command(cmd, uid), **kwargs)

    def spawn(self, cmd: list[str], uid: int) -> None:
        self.node.spawn(self.pod.netns, self.command(cmd, uid))


@pytest.fixture
def userns_pod(node: Node) -> Iterator[UsernsPod]:
    pod = UsernsPod(node, "private")
    try:
        pod.create()
        yield pod
    finally:
        pod.close()


def write_istio_inside(pod: UsernsPod, lockfile: Path) -> None:
    """Istio's rules as istio-init writes them: from inside the pod's user namespace, as its root."""
    lockfile.touch()
    lockfile.chmod(0o666)
    for family in (4, 6):
        tool = "iptables-legacy-restore" if family == 4 else "ip6tables-legacy-restore"
        pod.inside(["env", f"XTABLES_LOCKFILE={lockfile}", tool, "--noflush"], input=istio_rules(family))


@pytest.mark.parametrize("mesh", ["none", "istio"])
def test_add_check_del_with_traffic_in_a_user_namespace_pod(node, userns_pod, mesh):
    owner = userns_pod.inside(["cat", "/proc/self/uid_map"]).stdout.split()
    assert owner == ["0", str(ID_BASE), str(ID_COUNT)], "the pod's processes must run in its user namespace"
    node.add_pod_fixture(pod_fixture("private", annotations={PREFIX + "serviceMesh": mesh}))
    conflist = node.write_conflist()
    pod = userns_pod.pod
    if mesh == "istio":  # Istio CNI earlier in the chain: its owner rules are there before ours
        write_istio_inside(userns_pod, node.dir / "xtables.lock")
    add = node.cni("add", pod, conflist, check=False)
    assert add.returncode == 0, add.stdout + add.stderr
    pod.result = json.loads(add.stdout)
    # The validator first, inside the user namespace, like the init container it is.
    validator = [POD_PYTHON, "-c", "from validator.main import main; main()", "--termination-log", "/dev/null"]
    done = userns_pod.inside(validator, uid=VALIDATOR_UID, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    fams = "4,6"
    userns_pod.spawn([POD_PYTHON, "-m", "tests.support.programs.standins", "app", "--name", "private",
                      "--ports", "8080", "--families", fams], uid=APP_UID)
    userns_pod.spawn([POD_PYTHON, "-m", "tests.support.programs.standins", "engine", "--name", "private",
                      "--port", "13378", "--forward", "8080", "--families", fams], uid=ENGINE_UID)
    expected = "engine=private orig=8080 -> app=private port=8080"
    if mesh == "istio":
        userns_pod.inside(["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
        userns_pod.spawn([POD_PYTHON, "-m", "tests.support.programs.standins", "istio", "--name", "private",
                          "--port", "15006", "--families", fams], uid=ISTIO_UID)
        expected = "istio=private -> " + expected
    client = client_pod(node)
    assert node.connect(client.netns, [target(pod, 8080)]) == {target(pod, 8080): expected}

    check = node.cni("check", pod, conflist, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    node.cni("del", pod, conflist)
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    if mesh == "istio":
        assert "ISTIO_INBOUND" in node.nat_rules(pod), "DEL must leave Istio's rules alone"
