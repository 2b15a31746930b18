"""The installer's file work against a temporary host root: no root, no network, no process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from daemonset import conflist
from daemonset.install import Installer
from tests.support.conf_dir import ConfDirWatch, loadable, write_as_agent
from tests.support.fake_clock import FakeClock
from tests.support.installer import PLUGIN, Host

ENTRY = {"type": "microgateway-cni"}

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"
PRIMARIES = ["10-calico.conflist", "10-flannel.conflist", "05-cilium.conflist", "10-kindnet.conflist",
             "10-weave.conflist", "10-bridge.conf"]


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path, "token-1", b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")


def installer_for(host: Host, **extra: str) -> Installer:
    return Installer(host.settings(**extra), lambda *a, **k: None)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_install_reinstall_uninstall(host, primary):
    shutil.copy(FIXTURES / primary, host.net_dir / primary)
    shutil.copy(FIXTURES / "00-invalid.conflist", host.net_dir / "00-invalid.conflist")
    original = (FIXTURES / primary).read_bytes()
    installer = installer_for(host)
    assert installer.reconcile() == "written"
    name = primary.replace(".conf", ".conflist") if primary.endswith(".conf") else primary
    chained = host.conf(name)
    entries = [p for p in chained["plugins"] if p["type"] == "microgateway-cni"]
    assert len(entries) == 1 and chained["plugins"][-1] == entries[0]
    assert chained["cniVersion"] == json.loads(original)["cniVersion"]
    assert (host.bin_dir / "microgateway-cni").read_bytes() == Path(PLUGIN).read_bytes()
    assert os.stat(host.bin_dir / "microgateway-cni").st_mode & 0o777 == 0o755
    kubeconfig = host.net_dir / "microgateway-cni-kubeconfig"
    assert os.stat(kubeconfig).st_mode & 0o777 == 0o600
    assert json.loads(kubeconfig.read_text())["users"][0]["user"]["token"] == "token-1"
    assert installer.ready()
    before = {p.name: p.stat().st_mtime_ns for p in host.net_dir.iterdir()}
    assert installer_for(host).reconcile() == "unchanged"  # a restarted installer: idempotent
    assert {p.name: p.stat().st_mtime_ns for p in host.net_dir.iterdir()} == before
    installer.uninstall()
    if primary.endswith(".conf"):
        assert (host.net_dir / primary).read_bytes() == original
        assert not (host.net_dir / name).exists()
    else:
        assert host.conf(primary) == json.loads(original)
    assert not kubeconfig.exists() and (host.bin_dir / "microgateway-cni").exists()
    assert (host.net_dir / "00-invalid.conflist").read_bytes() == (FIXTURES / "00-invalid.conflist").read_bytes()


def test_waits_without_primary_and_readiness_follows_the_entry(host):
    installer = installer_for(host)
    assert installer.reconcile() == "waiting" and not installer.ready()
    shutil.copy(FIXTURES / "00-invalid.conflist", host.net_dir / "00-invalid.conflist")
    assert installer.reconcile() == "waiting"
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    assert installer.reconcile() == "written" and installer.ready()
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")  # primary rewrites
    assert not installer.ready()
    assert installer.reconcile() == "written" and installer.ready()


def test_standalone_and_manual_modes(host):
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    standalone = installer_for(host, MGW_MODE="standalone")
    assert standalone.reconcile() == "written" and standalone.ready()
    assert host.conf(conflist.STANDALONE_NAME)["plugins"][0]["type"] == "microgateway-cni"
    assert host.conf("10-calico.conflist") == json.loads((FIXTURES / "10-calico.conflist").read_text())
    standalone.uninstall()
    assert not (host.net_dir / conflist.STANDALONE_NAME).exists()
    manual = installer_for(host, MGW_MODE="manual")
    assert manual.reconcile() == "unchanged"
    assert host.conf("10-calico.conflist") == json.loads((FIXTURES / "10-calico.conflist").read_text())


def make_bundle(root: Path, version: str) -> Path:
    """A PyInstaller one-dir layout: the executable beside the _internal directory it owns."""
    bundle = root / f"bundle-{version}"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "_internal" / "VERSION").write_text(version)
    shutil.copy(PLUGIN, bundle / "microgateway-cni")
    return bundle / "microgateway-cni"


def test_one_dir_bundle_installed_atomically_and_kept_for_running_dels(host, tmp_path):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    first = installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "1")))
    assert first.reconcile() == "written"
    link = host.bin_dir / "microgateway-cni"
    assert link.is_symlink() and link.resolve().parent.name.startswith(".microgateway-cni-")
    assert (link.resolve().parent / "_internal" / "VERSION").read_text() == "1"
    v1 = link.resolve().parent.name
    assert not first.binary.install()  # idempotent
    second = installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "2")))
    assert second.binary.install()
    assert (link.resolve().parent / "_internal" / "VERSION").read_text() == "2"
    assert (host.bin_dir / v1).is_dir(), "the previous version stays for DELs in flight"
    assert installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "3"))).binary.install()
    versions = sorted(p.name for p in host.bin_dir.iterdir() if p.name.startswith(".microgateway-cni-"))
    assert len(versions) == 2 and v1 not in versions
    assert not [p for p in host.bin_dir.iterdir() if ".tmp-" in p.name or ".link-" in p.name]


def test_repeated_reverts_warn_naming_the_culprit_and_back_off(host):
    shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
    logged: list[tuple[str, str]] = []
    reverts: list[int] = []
    clock = FakeClock()
    installer = Installer(host.settings(MGW_REVERT_WARNING_THRESHOLD="3"),
                          lambda level, msg, **fields: logged.append((level, msg)),
                          on_revert=lambda: reverts.append(1), clock=clock)
    installer.reconcile()
    for _ in range(4):  # Cilium with cni.exclusive=true rewrites its file without us
        shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
        assert installer.reconcile() == "written"
    warnings = [msg for level, msg in logged if level == "warn"]
    assert len(reverts) == 4 and len(warnings) == 2
    assert "cni.exclusive" in warnings[0] and "MGW_MODE=standalone" in warnings[0]
    assert clock.sleeps == [0.5, 1.0]  # from the threshold on, each revert backs off longer


def test_reverts_outside_the_window_are_forgotten(host):
    shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
    clock = FakeClock()
    installer = Installer(host.settings(MGW_REVERT_WARNING_THRESHOLD="2"), lambda *a, **k: None, clock=clock)
    installer.reconcile()
    for _ in range(3):
        clock.now += 61  # one revert a minute is an agent doing its job, not a fight
        shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
        assert installer.reconcile() == "written"
    assert clock.sleeps == []


NEEDS_NEWER_GLIBC = """#!/bin/sh
echo "/lib64/libc.so.6: version \\`GLIBC_2.99' not found (required by microgateway-cni)" >&2
exit 1
"""


def bundle_running(root: Path, version: str, script: str) -> Path:
    """A one-dir layout whose executable is the given shell script."""
    bundle = root / f"bundle-{version}"
    (bundle / "_internal").mkdir(parents=True)
    executable = bundle / "microgateway-cni"
    executable.write_text(script)
    executable.chmod(0o755)
    return executable


@pytest.mark.parametrize("script", [NEEDS_NEWER_GLIBC, "#!/bin/sh\necho not json\n", "not an executable"])
def test_a_plugin_bundle_that_cannot_run_never_replaces_a_working_one(host, tmp_path, script):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    working = installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "1")))
    assert working.reconcile() == "written" and working.ready()
    link = host.bin_dir / "microgateway-cni"
    before = os.readlink(link)
    logs: list[tuple[str, str, dict]] = []
    broken = Installer(host.settings(MGW_PLUGIN_BINARY=str(bundle_running(tmp_path, "2", script))),
                       lambda level, msg, **fields: logs.append((level, msg, fields)))
    assert broken.reconcile() == "unchanged"  # still chained, to the previous plugin
    assert os.readlink(link) == before and (host.bin_dir / before).is_file()
    assert not broken.ready(), "a node whose plugin could not be updated must stay not ready"
    errors = [(msg, fields) for level, msg, fields in logs if level == "error"]
    assert len(errors) == 1 and "cannot run on this node" in errors[0][0], logs
    assert errors[0][1]["previous"] == before
    expected = {NEEDS_NEWER_GLIBC: "GLIBC_2.99", "not an executable": "cannot execute"}.get(script, "not json")
    assert expected in errors[0][1]["error"], errors
    broken.reconcile()
    assert len([1 for level, *_ in logs if level == "error"]) == 1, "the same failure is logged once"


def test_a_plugin_bundle_that_cannot_run_is_not_chained_on_a_fresh_node(host, tmp_path):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    installer = installer_for(host, MGW_PLUGIN_BINARY=str(bundle_running(tmp_path, "1", NEEDS_NEWER_GLIBC)))
    with pytest.raises(RuntimeError, match=r"GLIBC_2\.99"):
        installer.reconcile()
    assert not (host.bin_dir / "microgateway-cni").exists() and not installer.ready()
    assert "microgateway-cni" not in (host.net_dir / "10-flannel.conflist").read_text()


def test_ahead_mode_keeps_a_copy_first_and_never_writes_the_primary(host):
    primary = host.net_dir / "10-calico.conflist"
    shutil.copy(FIXTURES / "10-calico.conflist", primary)
    original = primary.read_bytes()
    installer = installer_for(host, MGW_MODE="ahead")
    assert installer.reconcile() == "written" and installer.ready()
    copy = host.conf(conflist.AHEAD_NAME)
    assert copy == conflist.with_entry(json.loads(original), installer.settings.plugin_entry())
    assert sorted(p.name for p in host.net_dir.iterdir() if p.name.endswith(".conflist"))[0] == conflist.AHEAD_NAME
    assert installer_for(host, MGW_MODE="ahead").reconcile() == "unchanged"
    changed = json.loads(original)
    changed["plugins"][0]["mtu"] = 1234  # the primary rewrites its file: the copy follows on the next reconcile
    primary.write_text(json.dumps(changed))
    assert not installer.ready()
    assert installer.reconcile() == "written" and installer.ready()
    assert host.conf(conflist.AHEAD_NAME)["plugins"][0]["mtu"] == 1234
    assert json.loads(primary.read_bytes()) == changed  # only ever written by its agent
    primary.unlink()  # the primary's agent withdrew its configuration: ours must not keep the node going
    assert installer.reconcile() == "waiting" and not installer.ready()
    assert not (host.net_dir / conflist.AHEAD_NAME).exists()
    primary.write_bytes(original)
    assert installer.reconcile() == "written"
    installer.uninstall()
    assert primary.read_bytes() == original
    assert not (host.net_dir / conflist.AHEAD_NAME).exists()
    assert not (host.net_dir / "microgateway-cni-kubeconfig").exists()


def test_ahead_mode_refuses_a_primary_that_sorts_first(host):
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "00-calico.conflist")
    logged: list[tuple[str, str, dict]] = []
    installer = Installer(host.settings(MGW_MODE="ahead"), lambda level, msg, **f: logged.append((level, msg, f)))
    assert installer.reconcile() == "blocked" and installer.reconcile() == "blocked"
    assert not installer.ready() and not (host.net_dir / conflist.AHEAD_NAME).exists()
    errors = [f["error"] for level, _, f in logged if level == "error"]
    assert len(errors) == 1 and "00-calico.conflist" in errors[0] and "MGW_MODE=chained" in errors[0]
    assert host.conf("00-calico.conflist") == json.loads((FIXTURES / "10-calico.conflist").read_text())


def test_switching_modes_leaves_one_configuration_of_ours(host):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    original = host.conf("10-flannel.conflist")
    assert installer_for(host).reconcile() == "written"  # chained: our entry in the primary
    ahead = installer_for(host, MGW_MODE="ahead")
    assert ahead.reconcile() == "written" and ahead.ready()
    assert conflist.is_chained(host.conf(conflist.AHEAD_NAME), ahead.settings.plugin_entry())
    ahead.uninstall()  # also takes out the entry chained mode left in the primary
    assert host.conf("10-flannel.conflist") == original and not (host.net_dir / conflist.AHEAD_NAME).exists()
    assert ahead.reconcile() == "unchanged"  # uninstalled: a late change event must not reinstall
    assert installer_for(host, MGW_MODE="ahead").reconcile() == "written"
    chained = installer_for(host)
    assert chained.reconcile() == "written" and chained.ready()  # chained in place, then the copy goes
    assert not (host.net_dir / conflist.AHEAD_NAME).exists()
    assert installer_for(host, MGW_MODE="ahead").reconcile() == "written"  # and the entry left in the primary goes
    assert host.conf("10-flannel.conflist") == original


@pytest.mark.parametrize(("before", "after", "left"), [
    ("standalone", "chained", []),  # 05-microgateway-cni.conflist alone would be loaded before the primary
    ("standalone", "ahead", [conflist.AHEAD_NAME]),
    ("ahead", "standalone", [conflist.STANDALONE_NAME]),
    ("ahead", "manual", []),  # a copy nobody keeps up to date would shadow the primary
    ("standalone", "manual", [conflist.STANDALONE_NAME]),  # manual: the operator's own file may have that name
])
def test_a_new_mode_removes_the_files_of_the_old_one(host, before, after, left):
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    assert installer_for(host, MGW_MODE=before).reconcile() == "written"
    installer_for(host, MGW_MODE=after).reconcile()
    assert sorted(name for name in conflist.OWN_NAMES if (host.net_dir / name).exists()) == left


@pytest.mark.parametrize("mode", ["chained", "ahead", "standalone"])
def test_uninstall_removes_every_conflist_of_ours_whatever_wrote_it(host, mode):
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    original = host.conf("10-calico.conflist")
    for earlier in ("chained", "standalone", "ahead"):
        installer_for(host, MGW_MODE=earlier).chain()
    (host.net_dir / conflist.STANDALONE_NAME).write_bytes(conflist.render(conflist.standalone(ENTRY)))
    assert installer_for(host, MGW_MODE=mode).uninstall()
    assert not [name for name in conflist.OWN_NAMES if (host.net_dir / name).exists()]
    assert host.conf("10-calico.conflist") == original


@pytest.mark.parametrize("torn", [b"", b'{"cniVersion": "0.3.1", "name": "k8s-pod-netw'])
def test_ahead_copy_outlives_a_primary_written_in_place(host, torn):
    primary = host.net_dir / "10-calico.conflist"
    shutil.copy(FIXTURES / "10-calico.conflist", primary)
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "20-flannel.conflist")
    logged: list[tuple[str, str]] = []
    installer = Installer(host.settings(MGW_MODE="ahead"), lambda level, msg, **f: logged.append((level, msg)))
    assert installer.reconcile() == "written"
    copy = (host.net_dir / conflist.AHEAD_NAME).read_bytes()
    complete = primary.read_bytes()
    primary.write_bytes(torn)  # its agent truncated it and has not written the rest yet
    assert installer.reconcile() == "unchanged" and installer.reconcile() == "unchanged"
    assert (host.net_dir / conflist.AHEAD_NAME).read_bytes() == copy  # not removed, not made from 20-flannel
    assert [msg for level, msg in logged if level == "warn"] == [
        "the primary CNI configuration does not parse; keeping the copy of its last complete version until it does"]
    primary.write_bytes(complete.replace(b'"mtu": 0', b'"mtu": 1450'))
    assert installer.reconcile() == "written" and installer.ready()
    assert host.conf(conflist.AHEAD_NAME)["plugins"][0]["mtu"] == 1450
    primary.unlink()  # removed, not rewritten: the next primary is the one the runtime would load now
    assert installer.reconcile() == "written" and host.conf(conflist.AHEAD_NAME)["name"] == "cbr0"


def test_ahead_copy_removed_by_another_agent_counts_as_a_revert(host):
    shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
    reverts: list[int] = []
    clock = FakeClock()
    installer = Installer(host.settings(MGW_MODE="ahead", MGW_REVERT_WARNING_THRESHOLD="2"),
                          lambda *a, **k: None, on_revert=lambda: reverts.append(1), clock=clock)
    assert installer.reconcile() == "written"
    for _ in range(3):  # Cilium with cni.exclusive=true moves every other conflist away
        (host.net_dir / conflist.AHEAD_NAME).rename(host.net_dir / f"{conflist.AHEAD_NAME}.cilium_bak")
        assert installer.reconcile() == "written"
    assert len(reverts) == 3 and clock.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("primary", PRIMARIES)
def test_the_node_is_never_without_a_configuration_while_the_installer_writes(host, monkeypatch, primary):
    """After every file operation of chaining, re-chaining after the agent's rewrite, switching modes and
    uninstalling, the conf dir holds a file the runtime can load (containerd reloads at each event)."""
    path = host.net_dir / primary
    shutil.copy(FIXTURES / primary, path)
    original = path.read_bytes()
    watch = ConfDirWatch(monkeypatch, lambda: loadable(host.net_dir))
    assert installer_for(host).reconcile() == "written"
    write_as_agent(path, original)  # the agent rewrites its file: our entry is out, or its .conf is back first
    assert installer_for(host).reconcile() == "written"
    assert installer_for(host, MGW_MODE="ahead").reconcile() == "written"
    assert installer_for(host, MGW_MODE="standalone").reconcile() == "written"
    assert installer_for(host).reconcile() == "written"
    assert installer_for(host).uninstall()
    assert watch.missing == 0, "a runtime reloading then would have found no configuration"
    assert (host.net_dir / primary).read_bytes() == original or host.conf(primary) == json.loads(original)


def test_chaining_races_an_agent_writing_at_the_swap_and_keeps_its_newest_document(host, monkeypatch):
    path = host.net_dir / "10-calico.conflist"
    shutil.copy(FIXTURES / "10-calico.conflist", path)
    newer = [json.dumps({**host.conf("10-calico.conflist"), "name": f"k8s-pod-network-{n}"}).encode() for n in (2, 3)]
    watch = ConfDirWatch(monkeypatch, lambda: loadable(host.net_dir), path, before_exchange=list(newer))
    installer = installer_for(host)
    assert installer.reconcile() == "written"
    assert watch.missing == 0
    entry = installer.settings.plugin_entry()
    assert host.conf("10-calico.conflist") == conflist.with_entry(json.loads(newer[-1]), entry)
