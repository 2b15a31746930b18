"""The installer never writes back an old configuration over another agent's newer one.

Real processes on real files: the installer (as a daemon or as `uninstall`), an agent rewriting the
primary's conflist (tests/support/programs/conf_agent.py) and a reader watching the file. No kube-apiserver
is involved. Verdicts are counts of lost updates, never timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemonset import conflist, foreign_files
from daemonset.install import Installer
from tests.support.installer import INSTALLER, Daemon, Host
from tests.support.node import ROOT, daemonset_fixture, wait_for
from tests.support.programs.conf_agent import agent_part, generation, with_generation

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"
CALICO = FIXTURES / "10-calico.conflist"
AGENT = [sys.executable, "-m", "tests.support.programs.conf_agent"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def agent(path: Path, *args: str) -> dict[str, Any]:
    """Run the agent to completion; its figures."""
    done = subprocess.run([*AGENT, "agent", "--path", str(path), "--base", str(CALICO), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


class Reader:
    """A process reading the file in a loop until stopped; its figures."""

    def __init__(self, path: Path, stop: Path, entry: dict[str, Any] | None = None) -> None:
        self.stop = stop
        template = ["--entry", json.dumps(entry)] if entry else []
        self.proc = subprocess.Popen([*AGENT, "reader", "--path", str(path), "--base", str(CALICO), "--until",
                                      str(stop), *template], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def figures(self) -> dict[str, Any]:
        self.stop.touch()
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out.splitlines()[-1])


def generation_doc(gen: int, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    return with_generation(json.loads(CALICO.read_text()), gen, entry)


def chained_daemon(node, host: Host, revert_warning_threshold: str) -> tuple[Path, Daemon, dict[str, Any]]:
    """The agent's first document, then the installer daemon, ready (it has chained it): the file, the
    daemon and our entry."""
    path = host.net_dir / "10-calico.conflist"
    agent(path, "--start", "1", "--writes", "1")
    daemon = Daemon(node, host, MGW_REPAIR_MODE="none", MGW_REVERT_WARNING_THRESHOLD=revert_warning_threshold)
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    return path, daemon, host.settings().plugin_entry()


def report(capsys, name: str, **figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n{name}: " + "; ".join(f"{who}: {json.dumps(f)}" for who, f in figures.items()))


def test_agent_write_during_the_revert_pause_is_kept(tmp_path, capsys):
    """The issue's case: the primary writes mtu 1408 while the installer backs off after reading 1407."""
    host = Host(tmp_path, "token", b"ca")
    path = host.net_dir / "10-calico.conflist"
    newer: list[dict[str, Any]] = []

    def log(level: str, msg: str, **fields: Any) -> None:
        if level == "warn" and not newer:  # the installer has read generation 7 and is about to pause
            newer.append(agent(path, "--start", "8", "--writes", "1"))

    installer = Installer(host.settings(MGW_REVERT_WARNING_THRESHOLD="1"), log)
    entry = host.settings().plugin_entry()
    agent(path, "--start", "1", "--writes", "1")
    assert installer.chain() == "written"
    agent(path, "--start", "7", "--writes", "1")  # the primary rewrites its file: our entry is gone
    assert installer.chain() == "written"
    assert newer, "the revert back-off did not start"
    assert host.conf("10-calico.conflist") == conflist.with_entry(generation_doc(8), entry)
    assert generation(host.conf("10-calico.conflist")) == 8
    report(capsys, "write during the pause", agent=newer[0])


def test_daemon_keeps_the_newer_document_written_during_its_pause(node_host, capsys):
    """The same with the daemon as a process: the agent writes as soon as the installer logs the back-off."""
    node, host = node_host
    path, daemon, entry = chained_daemon(node, host, revert_warning_threshold="1")
    agent(path, "--start", "7", "--writes", "1")
    assert wait_for(lambda: any(e.get("level") == "WARNING" for e in daemon.log()), timeout=15), daemon.log()
    figures = agent(path, "--start", "8", "--writes", "1")
    assert wait_for(lambda: conflist.is_chained(host.conf("10-calico.conflist"), entry), timeout=15)
    final = host.conf("10-calico.conflist")
    messages = [e["message"] for e in daemon.log()]
    assert daemon.stop() == 0
    assert final == conflist.with_entry(generation_doc(8), entry), messages
    report(capsys, "daemon, write during the pause", agent=figures)


def test_tight_loop_agent_never_loses_a_write_to_rechaining(node_host, tmp_path, capsys):
    """2000 writes in bursts of 50; after each burst the installer re-chains, racing the next burst."""
    node, host = node_host
    path, daemon, entry = chained_daemon(node, host, revert_warning_threshold="60000")
    reader = Reader(path, tmp_path / "stop-reader")
    figures = agent(path, "--start", "2", "--writes", "2000", "--burst", "50")
    assert wait_for(lambda: conflist.is_chained(host.conf("10-calico.conflist"), entry), timeout=15)
    final = host.conf("10-calico.conflist")
    seen = reader.figures()
    log = daemon.log()
    assert daemon.stop() == 0
    installer = {"writes": sum(e["message"] == "plugin chained" for e in log),
                 "re-reads after a change": sum(e["message"].startswith("the CNI configuration changed") for e in log)}
    report(capsys, "tight loop", agent=figures, reader=seen, installer=installer)
    assert figures["writes by the agent"] == 2000 and figures["lost"] == 0, figures
    assert figures["foreign"] == figures["torn"] == figures["duplicate entries"] == figures["absent"] == 0, figures
    assert figures["bursts re-chained"] == 40, figures
    assert seen["regressions"] == 0 and seen["torn"] == 0 and seen["duplicate entries"] == 0, seen
    assert seen["absent"] == 0, "the primary's name was free for a moment: containerd would have loaded nothing"
    assert final == conflist.with_entry(generation_doc(2001), entry)


@pytest.mark.parametrize("agent_wrote", [False, True], ids=["quiet", "agent-wrote-before-the-swap"])
def test_an_installer_killed_between_its_swap_and_its_check_is_finished_by_the_next(tmp_path, agent_wrote):
    """SIGKILL right after the swap leaves the displaced document under a name the next installer knows:
    the agent's newer document goes back in place and is chained; the one ours was built from is dropped."""
    host = Host(tmp_path, "token", b"ca")
    path = host.net_dir / "10-calico.conflist"
    entry = host.settings().plugin_entry()
    agent(path, "--start", "1", "--writes", "1")
    writes = ["--agent-writes", as_agent_wrote(2)] if agent_wrote else []
    killed = subprocess.run([sys.executable, "-m", "tests.support.programs.killed_installer", "--agent-file",
                             str(path), *writes], cwd=ROOT, env={**host.env(), "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p.name for p in host.net_dir.iterdir() if foreign_files.SWAP_MARK in p.name]
    assert len(left) == 1, "the displaced document must survive the kill under a name the restart knows"
    assert host.conf("10-calico.conflist") == conflist.with_entry(generation_doc(1), entry)
    logged: list[str] = []
    assert Installer(host.settings(), lambda level, msg, **f: logged.append(msg)).chain() == (
        "written" if agent_wrote else "unchanged")
    newest = 2 if agent_wrote else 1
    assert host.conf("10-calico.conflist") == conflist.with_entry(generation_doc(newest), entry)
    put_back = "put back a CNI configuration an interrupted write had displaced"
    assert (put_back in logged) is agent_wrote, logged
    assert not [p.name for p in host.net_dir.iterdir() if p.name.startswith(".")], "temp files left"


def test_uninstall_racing_an_agent_never_loses_its_write(tmp_path, capsys):
    """An agent whose template includes our entry keeps writing while `uninstall` runs again and again."""
    host = Host(tmp_path, "token", b"ca")
    path = host.net_dir / "10-calico.conflist"
    entry = host.settings().plugin_entry()
    stop_agent = tmp_path / "stop-agent"
    (host.net_dir / "microgateway-cni-kubeconfig").write_text("{}")
    agent(path, "--start", "1", "--writes", "1", "--entry", json.dumps(entry))
    reader = Reader(path, tmp_path / "stop-reader", entry)
    writer = subprocess.Popen([*AGENT, "agent", "--path", str(path), "--base", str(CALICO), "--start", "2",
                               "--until", str(stop_agent), "--entry", json.dumps(entry)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [subprocess.run([INSTALLER, "uninstall"], env=host.env(), capture_output=True, text=True, timeout=60)
            for _ in range(10)]
    stop_agent.touch()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    figures = json.loads(out.splitlines()[-1])
    last = subprocess.run([INSTALLER, "uninstall"], env=host.env(), capture_output=True, text=True, timeout=60)
    seen = reader.figures()
    logs = [json.loads(line) for run in [*runs, last] for line in run.stdout.splitlines() if line.startswith("{")]
    uninstall = {"runs": len(runs) + 1, "exit codes": sorted({r.returncode for r in runs}),
                 "entries removed": sum(e["message"] == "plugin unchained" for e in logs),
                 "re-reads after a change": sum(e["message"].startswith("the CNI configuration changed") for e in logs)}
    report(capsys, "uninstall race", agent=figures, reader=seen, uninstall=uninstall)
    assert last.returncode == 0, last.stdout + last.stderr
    assert all(r.returncode in (0, 1) for r in runs), [r.stderr for r in runs]
    assert figures["lost"] == 0 and figures["foreign"] == figures["torn"] == figures["absent"] == 0, figures
    assert seen["regressions"] == seen["torn"] == seen["duplicate entries"] == seen["absent"] == 0, seen
    final = host.conf("10-calico.conflist")
    assert final == agent_part(generation_doc(figures["last generation"], entry)), final
    assert not (host.net_dir / "microgateway-cni-kubeconfig").exists()
    assert not [p.name for p in host.net_dir.iterdir() if p.name.startswith(".")], "temp or set-aside files left"


def ahead_daemon(node, host: Host, **extra: str) -> tuple[Path, Path, Daemon, dict[str, Any]]:
    """The agent's first document, then the installer daemon in ahead mode, ready (its copy is in place):
    the primary, the copy, the daemon and our entry."""
    path = host.net_dir / "10-calico.conflist"
    agent(path, "--start", "1", "--writes", "1")
    daemon = Daemon(node, host, MGW_MODE="ahead", MGW_REPAIR_MODE="none", **extra)
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    copy = host.net_dir / conflist.AHEAD_NAME
    entry = host.settings().plugin_entry()
    assert host.conf(conflist.AHEAD_NAME) == conflist.with_entry(generation_doc(1), entry)
    return path, copy, daemon, entry


def as_agent_wrote(gen: int) -> str:
    """The agent's file, byte for byte, after its write of generation `gen`."""
    return json.dumps(generation_doc(gen), indent=2)


def test_ahead_copy_is_never_absent_or_behind_while_a_tight_loop_agent_rewrites_the_primary(node_host, tmp_path,
                                                                                           capsys):
    """The agent rewrites its file as fast as it can while the daemon keeps the copy; one reader watches the
    copy (what libcni loads), another the primary. The installer never writes the primary, so the agent
    loses nothing, and the copy holds our entry on every read."""
    node, host = node_host
    path, copy, daemon, entry = ahead_daemon(node, host)
    copy_reader = Reader(copy, tmp_path / "stop-copy-reader")
    primary_reader = Reader(path, tmp_path / "stop-primary-reader")
    node.processes += [copy_reader.proc, primary_reader.proc]  # stopped with the node if the test fails
    started = time.monotonic()
    figures = agent(path, "--start", "2", "--writes", "3000")
    agent_seconds = round(time.monotonic() - started, 2)
    last = figures["last generation"]
    started = time.monotonic()
    caught_up = wait_for(lambda: host.conf(conflist.AHEAD_NAME) == conflist.with_entry(generation_doc(last), entry),
                         timeout=2, interval=0.005)
    catch_up_ms = round((time.monotonic() - started) * 1000)
    copy_generation = generation(host.conf(conflist.AHEAD_NAME))
    seen, primary_seen = copy_reader.figures(), primary_reader.figures()
    reverts = daemon.sample("microgateway_cni_reverts_seen_total")
    log = daemon.log()
    assert daemon.stop() == 0
    installer = {"copies written": sum(e["message"] == "plugin chained ahead of the primary" for e in log),
                 "reverts seen": reverts, "agent's run in s": agent_seconds,
                 "ms from the agent's exit to the copy of its last write": catch_up_ms}
    report(capsys, "ahead mode, tight loop", agent=figures, copy_reader=seen, primary_reader=primary_seen,
           installer=installer)
    assert caught_up, f"the copy stayed at generation {copy_generation}, the agent's last is {last}"
    assert figures["writes by the agent"] == 3000 and figures["lost"] == figures["foreign"] == 0, figures
    assert figures["chained seen"] == primary_seen["chained seen"] == 0, (figures, primary_seen)
    assert path.read_text() == as_agent_wrote(last)
    assert seen["absent"] == seen["torn"] == seen["regressions"] == seen["duplicate entries"] == 0, seen
    assert seen["chained seen"] == seen["reads"] > 0, seen
    assert primary_seen["regressions"] == primary_seen["absent"] == 0, primary_seen
    assert installer["copies written"] > 1 and reverts == 0, installer
    assert not [p.name for p in host.net_dir.iterdir() if p.name.startswith(".")], "temp files left"


def test_sigterm_uninstall_in_ahead_mode_removes_the_copy_while_the_agent_writes(node_host, tmp_path, capsys):
    """The DaemonSet is deleted while the primary agent keeps rewriting its file: SIGTERM's uninstall removes
    the copy, and no change event the agent causes afterwards brings it back; the agent's file is its own."""
    node, host = node_host
    node.write_daemonsets(daemonset_fixture())
    path, copy, daemon, _ = ahead_daemon(node, host)
    stop_agent = tmp_path / "stop-agent"
    writer = subprocess.Popen([*AGENT, "agent", "--path", str(path), "--base", str(CALICO), "--start", "2",
                               "--until", str(stop_agent)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    node.processes.append(writer)
    assert wait_for(lambda: generation(host.conf(conflist.AHEAD_NAME)) > 100, timeout=15), daemon.log()
    assert daemon.stop() == 0, daemon.log()
    at_stop = generation(host.conf("10-calico.conflist"))
    assert wait_for(lambda: generation(host.conf("10-calico.conflist")) > at_stop + 500, timeout=15)
    copy_after_uninstall = copy.exists()
    stop_agent.touch()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    figures = json.loads(out.splitlines()[-1])
    messages = [e["message"] for e in daemon.log()]
    report(capsys, "ahead mode, uninstall while the agent writes", agent=figures)
    assert f"removed our {conflist.AHEAD_NAME}: uninstalled" in messages, messages
    assert messages[-1].startswith("uninstalled"), messages
    assert not copy_after_uninstall and not copy.exists()
    assert figures["lost"] == figures["foreign"] == figures["chained seen"] == 0, figures
    assert path.read_text() == as_agent_wrote(figures["last generation"])
    assert not (host.net_dir / "microgateway-cni-kubeconfig").exists()
    assert (host.bin_dir / "microgateway-cni").exists()
    assert not [p.name for p in host.net_dir.iterdir() if p.name.startswith(".")], "temp files left"


def test_ahead_copy_deleted_again_and_again_counts_reverts_and_backs_off(node_host):
    """Another agent deleting our copy is a revert, as it is for our entry in chained mode: counted in
    /metrics, logged, and past the threshold warned about and backed off. The primary is never written."""
    node, host = node_host
    path, copy, daemon, entry = ahead_daemon(node, host, MGW_REVERT_WARNING_THRESHOLD="3")
    for _ in range(6):
        copy.unlink()
        assert wait_for(lambda: copy.exists() and conflist.is_chained(host.conf(conflist.AHEAD_NAME), entry),
                        timeout=15), daemon.log()
    reverts = daemon.sample("microgateway_cni_reverts_seen_total")
    log = daemon.log()
    assert daemon.stop() == 0
    removed = [e for e in log if e["message"].startswith("chained entry was removed by another agent")]
    warned = [e for e in log if e["level"] == "WARNING" and e["message"].startswith(f"{copy} was reverted")]
    assert reverts == 6, [e["message"] for e in log]
    assert len(removed) == 6 and {e["conflist"] for e in removed} == {str(copy)}, removed
    assert [e["reverts"] for e in warned] == [3, 4, 5, 6], warned
    assert path.read_text() == as_agent_wrote(1)


def test_blocked_by_a_primary_that_sorts_first_then_chained_then_gone(node_host):
    """What the daemon shows for the copy's lifecycle: a primary libcni would load before our copy blocks
    ahead mode (error log naming it, not ready, 'blocked' in /metrics, no copy); renamed to sort after,
    the copy follows; removed, the copy goes with it and the node is not ready."""
    node, host = node_host
    early = host.net_dir / "00-calico.conflist"
    agent(early, "--start", "1", "--writes", "1")
    daemon = Daemon(node, host, MGW_MODE="ahead", MGW_REPAIR_MODE="none")
    copy = host.net_dir / conflist.AHEAD_NAME
    entry = host.settings().plugin_entry()

    def blocked_errors() -> list[dict[str, Any]]:
        return [e for e in daemon.log() if e["message"] == "cannot chain ahead of the primary"]

    assert wait_for(lambda: blocked_errors(), timeout=15), daemon.log()
    assert "00-calico.conflist" in blocked_errors()[0]["error"] and blocked_errors()[0]["level"] == "ERROR"
    assert daemon.sample('microgateway_cni_installs_total{result="blocked"}') >= 1
    assert not daemon.ready() and not copy.exists()
    path = host.net_dir / "10-calico.conflist"
    os.rename(early, path)
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    assert host.conf(conflist.AHEAD_NAME) == conflist.with_entry(generation_doc(1), entry)
    path.unlink()
    assert wait_for(lambda: not copy.exists(), timeout=15), daemon.log()
    assert not daemon.ready()
    messages = [e["message"] for e in daemon.log()]
    assert daemon.stop() == 0
    assert f"removed our {conflist.AHEAD_NAME}: no primary CNI configuration left" in messages, messages
    assert len(blocked_errors()) == 1, "the same reason is logged once"


def test_switching_from_ahead_to_chained_chains_the_primary_in_place_and_removes_the_copy(node_host):
    """A restart with MGW_MODE=chained (the DaemonSet stays, so the old installer leaves its copy): the new
    one writes our entry into the primary before it removes the copy."""
    node, host = node_host
    node.write_daemonsets(daemonset_fixture(deleted=False))
    path, copy, daemon, entry = ahead_daemon(node, host)
    assert daemon.stop() == 0
    assert copy.exists() and path.read_text() == as_agent_wrote(1)
    daemon = Daemon(node, host, MGW_MODE="chained", MGW_REPAIR_MODE="none")
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    assert wait_for(lambda: not copy.exists(), timeout=5), daemon.log()
    messages = [e["message"] for e in daemon.log()]
    assert daemon.stop() == 0
    assert host.conf("10-calico.conflist") == conflist.with_entry(generation_doc(1), entry)
    assert messages.index("plugin chained") < messages.index(f"removed our {conflist.AHEAD_NAME}: MGW_MODE=chained")
