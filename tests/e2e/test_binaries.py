"""The self-contained binaries (scripts/build-binaries.sh) on a simulated node, end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.support.bundles import ROOT, binary
from tests.support.installer import Daemon, Host
from tests.support.node import pod_fixture, wait_for
from tests.support.pods import client_pod, target


def test_runs_without_python_or_iptables_in_the_environment(binaries):
    done = subprocess.run([binary("microgateway-cni")], input=b'{"cniVersion": "0.4.0"}',
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True)
    assert done.returncode == 0 and json.loads(done.stdout)["cniVersion"] == "0.4.0"
    bad = subprocess.run([binary("microgateway-cni")], input=b"{", env={"CNI_COMMAND": "ADD"}, capture_output=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6 and b"Traceback" not in bad.stderr


def test_installer_plugin_and_validator_binaries_protect_a_pod(binaries, node):
    host = Host.for_node(node)
    primary = node.write_conflist(chained=False, name="10-primary.conflist")
    daemon = Daemon(node, host, installer=str(binary("microgateway-cni-installer")),
                    MGW_PLUGIN_BINARY=str(binary("microgateway-cni")), MGW_REPAIR_MODE="none")
    assert wait_for(daemon.ready, timeout=30), daemon.log()
    installed = node.bin_dir / "microgateway-cni"
    assert installed.is_symlink() and (installed.resolve().parent / "_internal").is_dir()
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", primary)
    code, verdict, message = node.validate(pod, validator=str(binary("microgateway-network-validator")))
    assert code == 0 and json.loads(verdict)["verdict"] == "pass", verdict + message
    node.start_workloads(pod, [8080])
    client = client_pod(node)
    assert node.connect(client.netns, [target(pod, 8080), target(pod, 4321)]) == {
        target(pod, 8080): "engine=web orig=8080 -> app=web port=8080", target(pod, 4321): "engine=web orig=4321"}
    # the installer writes netfilterBackend auto; this node has no legacy tables, so: nftables
    assert any("redirect to :13378" in line for line in node.mgw_rules(pod, 6)), node.mgw_rules(pod, 6)
    node.cni("check", pod, primary)
    node.cni("del", pod, primary)
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    assert daemon.stop() == 0


def test_glibc_check_passes_and_the_launcher_is_static(binaries):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "glibc-check.sh")], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 3, done.stdout + done.stderr
    assert all(": ok - bundles glibc 2." in line and "launcher static" in line for line in lines), done.stdout
    launcher = subprocess.run(["readelf", "-lW", str(binary("microgateway-cni"))], capture_output=True, text=True)
    assert "INTERP" not in launcher.stdout and "DYNAMIC" not in launcher.stdout


def _loaded_paths(debug_output: str) -> set[str]:
    """Every file the dynamic loader tried, opened or initialised, from LD_DEBUG=libs output."""
    paths = set(re.findall(r"(?:trying file|\bfile)=(/\S+)", debug_output))
    return paths | set(re.findall(r"calling (?:init|fini): (/\S+)", debug_output))


def test_no_library_comes_from_the_host_even_with_a_hostile_library_path(binaries, node46, monkeypatch):
    """LD_DEBUG=libs over a protected ADD and DEL through libcni, python-iptables' dlopens included."""
    node = node46
    hostile = node.dir / "hostile-lib"
    hostile.mkdir()
    node.install_plugin(binary("microgateway-cni"))
    bundle = binary("microgateway-cni").parent
    for lib in bundle.joinpath("_internal").glob("lib*.so*"):
        for host_dir in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"):
            if Path(host_dir, lib.name).exists():
                shutil.copy(Path(host_dir, lib.name), hostile / lib.name)
                break
    assert (hostile / "libpython3.11.so.1.0").exists() and (hostile / "libxtables.so.12").exists()
    monkeypatch.setenv("LD_LIBRARY_PATH", str(hostile))
    monkeypatch.setenv("LD_DEBUG", "libs")
    monkeypatch.setenv("LD_DEBUG_OUTPUT", str(node.dir / "ld-debug"))
    node.add_pod_fixture(pod_fixture("web"))
    conflist = node.write_conflist()
    pod = node.new_pod("web", conflist)
    node.cni("del", pod, conflist)
    for name in ("LD_LIBRARY_PATH", "LD_DEBUG", "LD_DEBUG_OUTPUT"):
        monkeypatch.delenv(name)
    assert pod.result and pod.ip(6)
    plugin_runs = [f.read_text() for f in node.dir.glob("ld-debug.*") if str(bundle) in f.read_text()]
    assert plugin_runs, "no LD_DEBUG output from the plugin"
    loaded = set().union(*(_loaded_paths(run) for run in plugin_runs))
    assert {p for p in loaded if not p.startswith(f"{bundle}/_internal/")} == set()
    names = {os.path.basename(p) for p in loaded}
    assert {"libc.so.6", "libpython3.11.so.1.0", "libxtables.so.12", "libxt_REDIRECT.so", "libip6tc.so.2"} <= names


def test_children_get_the_callers_library_path_and_preload_back(binaries, node):
    """The installer bundle runs a new plugin for CNI VERSION: that child sees the caller's environment."""
    seen = node.dir / "child-env"
    fake = node.dir / "fake-plugin"
    (fake / "_internal").mkdir(parents=True)
    (fake / "microgateway-cni").write_text(
        f"#!/bin/sh\nenv > {seen}\n"
        """echo '{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}'\n""")
    (fake / "microgateway-cni").chmod(0o755)
    preload = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    host = Host(node.dir / "host", node.token, node.ca_pem, log_file=node.log_file)
    daemon = Daemon(node, host, installer=str(binary("microgateway-cni-installer")),
                    MGW_PLUGIN_BINARY=str(fake / "microgateway-cni"), MGW_REPAIR_MODE="none",
                    LD_LIBRARY_PATH="/opt/caller/lib", LD_PRELOAD=preload)
    assert wait_for(seen.exists, timeout=30), daemon.log()
    assert daemon.stop() == 0
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["LD_LIBRARY_PATH"] == "/opt/caller/lib" and env["LD_PRELOAD"] == preload
    assert not [k for k in env if k.startswith("MGW_CALLER_") or k == "LD_LIBRARY_PATH_ORIG"]
