"""Install, keep chained and uninstall microgateway-cni on this node (the I/O around daemonset.conflist)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from cni.contract import PLUGIN_TYPE
from daemonset import conflist, files
from daemonset.clock import Clock, SystemClock
from daemonset.settings import Settings

PARKED_SUFFIX = ".mgw-original"  # not a CNI extension: libcni ignores the parked single-plugin .conf
REVERT_WINDOW_SECONDS = 60.0
COMMIT_ATTEMPTS = 10  # read-derive-commit rounds of one chain() or uninstall() while others keep changing files
VERIFY_TIMEOUT_SECONDS = 30.0
T = TypeVar("T")


def kubeconfig_document(server: str, ca_pem: bytes, token: str) -> dict[str, Any]:
    """JSON (valid YAML): the plugin parses it without importing a YAML library on the ADD path."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": PLUGIN_TYPE,
            "clusters": [{"name": "local", "cluster": {
                "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
            "users": [{"name": PLUGIN_TYPE, "user": {"token": token}}],
            "contexts": [{"name": PLUGIN_TYPE, "context": {"cluster": "local", "user": PLUGIN_TYPE}}]}


def verify_plugin(executable: str) -> str | None:
    """Run a freshly copied plugin once as the kubelet would (CNI VERSION): None if it answers, else why not.

    A plugin that cannot start on this node (a C library it lacks, a broken copy, another architecture)
    must never replace a working one: the kubelet would fail every pod sandbox on the node.
    """
    try:
        done = subprocess.run([executable], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                              env={**os.environ, "CNI_COMMAND": "VERSION"}, timeout=VERIFY_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return f"no answer to CNI VERSION within {VERIFY_TIMEOUT_SECONDS:.0f}s"
    except OSError as exc:
        return f"cannot execute it: {exc.strerror}"
    try:
        supported = json.loads(done.stdout)["supportedVersions"]
    except (ValueError, KeyError, TypeError):
        supported = None
    if done.returncode != 0 or not isinstance(supported, list) or "1.0.0" not in supported:
        lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return f"CNI VERSION exited {done.returncode}: {lines[-1] if lines else 'no output'}"
    return None


def _write_if_unchanged(path: str, as_read: bytes | None, data: bytes) -> bool:
    """Commit `data` only if `path` is still as we read it: absent (None), or holding `as_read`."""
    if as_read is None:
        return files.create_if_absent(path, data)
    return files.replace_if_unchanged(path, as_read, data)


class Installer:
    def __init__(self, settings: Settings, log: Callable[..., None],
                 on_revert: Callable[[], None] = lambda: None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.log = log
        self.on_revert = on_revert
        self.chained_paths: set[str] = set()  # conflists we wrote our entry into: a later loss of it is a revert
        self._bundle_digest: str | None = None
        self.bundle_error: str | None = None  # why the image's plugin bundle cannot run here, while it cannot
        self.blocked: str | None = None  # why ahead mode cannot put its copy first, while it cannot
        self._ahead_source: str | None = None  # the primary's file name our ahead copy was made from
        self._unparsable: str | None = None  # that file, while it does not parse
        self.reverts: deque[float] = deque()
        self._lock = threading.RLock()  # the watch thread's reconcile and SIGTERM's uninstall never interleave
        self._uninstalled = False
        self._warned_fallback = False

    # -- paths -------------------------------------------------------------------------------------
    @property
    def binary_path(self) -> str:
        return os.path.join(self.settings.cni_bin_dir, PLUGIN_TYPE)

    @property
    def kubeconfig_path(self) -> str:
        return os.path.join(self.settings.cni_net_dir, self.settings.kubeconfig_name)

    @property
    def standalone_path(self) -> str:
        return os.path.join(self.settings.cni_net_dir, conflist.STANDALONE_NAME)

    @property
    def ahead_path(self) -> str:
        return os.path.join(self.settings.cni_net_dir, conflist.AHEAD_NAME)

    def _conf_files(self) -> dict[str, bytes]:
        directory = self.settings.cni_net_dir
        found = {}
        for name in os.listdir(directory):
            if name.endswith(conflist.CONF_EXTENSIONS):
                data = files.read(os.path.join(directory, name))
                if data is not None:
                    found[name] = data
        return found

    # -- install -----------------------------------------------------------------------------------
    def install_binary(self) -> bool:
        source = self.settings.plugin_binary
        if os.path.isdir(os.path.join(os.path.dirname(source), "_internal")):
            return self._install_bundle(os.path.dirname(source))
        # A symlink (e.g. into a container's filesystem) is not an installation, whatever it points to.
        if not os.path.islink(self.binary_path) and files.digest(self.binary_path) == files.digest(source):
            return False
        files.copy_atomic(source, self.binary_path)
        self.log("info", "plugin binary installed", path=self.binary_path)
        return True

    def _install_bundle(self, source_dir: str) -> bool:
        """A PyInstaller one-dir bundle: versioned hidden directory + atomically swapped symlink.

        The previous version stays until the next update: a kubelet may be running it for a DEL. The new
        version must answer CNI VERSION from its new place before the symlink points at it; if it cannot,
        the previous plugin stays, the installer stays not ready, and later reconciles try again.
        """
        if self._bundle_digest is None:
            self._bundle_digest = files.tree_digest(source_dir)  # the image is immutable: hash once
        version_dir = f".{PLUGIN_TYPE}-{self._bundle_digest[:16]}"
        link_target = os.path.join(version_dir, PLUGIN_TYPE)
        bin_dir = self.settings.cni_bin_dir
        try:
            previous = os.readlink(self.binary_path)
        except OSError:
            previous = ""
        if previous == link_target and os.path.isfile(os.path.join(bin_dir, link_target)):
            return False
        if not os.path.isdir(os.path.join(bin_dir, version_dir)):
            files.copy_tree_atomic(source_dir, os.path.join(bin_dir, version_dir))
        error = verify_plugin(os.path.join(bin_dir, link_target))
        if error is not None:
            if error != self.bundle_error:
                self.log("error", "the plugin bundle cannot run on this node; keeping the previous plugin and "
                         "staying not ready", bundle=os.path.join(bin_dir, version_dir), error=error,
                         previous=previous or None)
            self.bundle_error = error
            if not os.path.exists(self.binary_path):  # nothing to keep: never chain a plugin that is not there
                raise RuntimeError(f"no runnable plugin installed: {error}")
            return False
        self.bundle_error = None
        files.symlink_atomic(link_target, self.binary_path)
        keep = {version_dir, previous.split(os.sep)[0]}
        for name in os.listdir(bin_dir):
            if name.startswith(f".{PLUGIN_TYPE}-") and name not in keep and os.path.isdir(os.path.join(bin_dir, name)):
                shutil.rmtree(os.path.join(bin_dir, name), ignore_errors=True)
        self.log("info", "plugin bundle installed", path=self.binary_path, version=version_dir)
        return True

    def write_kubeconfig(self) -> bool:
        sa = self.settings.service_account_dir
        token = (files.read(os.path.join(sa, "token")) or b"").decode().strip()
        ca = files.read(os.path.join(sa, "ca.crt")) or b""
        if not token or not ca or not self.settings.api_server:
            raise RuntimeError(f"service account token/ca.crt in {sa} or KUBERNETES_SERVICE_HOST missing")
        data = (json.dumps(kubeconfig_document(self.settings.api_server, ca, token), indent=2) + "\n").encode()
        if files.read(self.kubeconfig_path) == data:
            return False
        files.write_atomic(self.kubeconfig_path, data, mode=0o600)
        self.log("info", "kubeconfig written", path=self.kubeconfig_path)
        return True

    def chain(self) -> str:
        """Make the configuration contain our entry; returns 'unchanged', 'written', 'waiting', 'blocked' or
        'contended'.

        Every write is derived from a read made just before it and committed only if the file still
        holds what was read (files.replace_if_unchanged); the revert back-off comes first, so nothing
        read before it is ever written after it.
        """
        with self._lock:
            mode = self.settings.mode
            if self._uninstalled:
                return "unchanged"
            if mode == "manual":
                self._remove_copy("MGW_MODE=manual")  # a stale copy would shadow the primary
                return "unchanged"
            self._recover()
            if mode == "standalone":
                result = self._until_committed(self._chain_standalone)
            elif mode == "ahead":
                self._back_off_if_reverted()
                result = self._chain_ahead()
            else:
                self._back_off_if_reverted()
                result = self._until_committed(self._chain_primary)
            if result in ("written", "unchanged"):
                self._remove_other_modes_files(mode)
            self._warn_once_if_exchange_refused()
            if result is None:
                self.log("warn", "the CNI configuration kept changing while we chained it; retrying on the next "
                         "change", dir=self.settings.cni_net_dir, attempts=COMMIT_ATTEMPTS)
                return "contended"
            return result

    def _until_committed(self, attempt: Callable[[], T | None]) -> T | None:
        """Run one read-derive-commit round until it commits (its result), at most COMMIT_ATTEMPTS times.

        A round returns None when a file changed between its read and its commit: the next round reads
        again. None after the last round.
        """
        for _ in range(COMMIT_ATTEMPTS):
            result = attempt()
            if result is not None:
                return result
            self.log("debug", "the CNI configuration changed between our read and our commit; re-reading",
                     dir=self.settings.cni_net_dir)
        return None

    def _recover(self) -> None:
        """Finish what a killed installer left half done in the conf dir."""
        for name in files.recover(self.settings.cni_net_dir):
            self.log("info", "put back a CNI configuration an interrupted write had displaced", conflist=name)

    def _warn_once_if_exchange_refused(self) -> None:
        fallback = files.exchange_fallback()
        if fallback is not None and not self._warned_fallback:
            self._warned_fallback = True
            self.log("warn", "the filesystem of the CNI conf dir refuses RENAME_EXCHANGE; files of other agents "
                     "are replaced by moving them aside, which leaves the runtime without a configuration for an "
                     "instant", error=fallback)

    def _chain_standalone(self) -> str | None:
        data = conflist.render(conflist.standalone(self.settings.plugin_entry()))
        current = files.read(self.standalone_path)
        if current == data:
            return "unchanged"
        return "written" if _write_if_unchanged(self.standalone_path, current, data) else None

    def _chain_ahead(self) -> str:
        """Our own copy of the primary's conflist with our entry, under a name libcni loads first.

        The copy is ours, so it is replaced by rename and is never absent while the primary exists. A
        primary that is gone takes our copy with it; one that does not parse for a moment (its agent
        writes it in place) leaves the copy of its last complete version until it parses again.
        """
        snapshot = self._conf_files()
        primary = conflist.choose_primary(snapshot)
        source = self._ahead_source
        if (source is not None and source in snapshot and conflist.parse(source, snapshot[source]) is None
                and os.path.exists(self.ahead_path)):
            if source != self._unparsable:
                self.log("warn", "the primary CNI configuration does not parse; keeping the copy of its last "
                         "complete version until it does", primary=source, conflist=self.ahead_path)
            self._unparsable = source
            return "unchanged"
        self._unparsable = None
        if primary is None:
            self._remove_copy("no primary CNI configuration left")
            return "waiting"
        document = conflist.ahead(primary, self.settings.plugin_entry())
        if document is None:
            self._remove_copy("the primary's file sorts before it")
            reason = (f"the primary CNI configuration {primary.name} sorts before {conflist.AHEAD_NAME}, so the "
                      "runtime would never load our copy; use MGW_MODE=chained")
            if reason != self.blocked:
                self.log("error", "cannot chain ahead of the primary", error=reason)
            self.blocked = reason
            return "blocked"
        self.blocked = None
        self._ahead_source = primary.name
        data = conflist.render(document)
        result = "unchanged"
        if files.read(self.ahead_path) != data:
            files.write_atomic(self.ahead_path, data)
            self.chained_paths.add(self.ahead_path)
            self.log("info", "plugin chained ahead of the primary", conflist=self.ahead_path, primary=primary.name)
            result = "written"
        if any(conflist.has_entry(parsed.document) for name, raw in snapshot.items()
               if name not in conflist.OWN_NAMES and (parsed := conflist.parse(name, raw)) is not None):
            # An entry chained mode left in a primary: with the copy in place, the primary goes back to its
            # agent's document (conditionally, as every write of a file we do not own).
            self._until_committed(self._unchain)
        return result

    def _remove_copy(self, why: str) -> None:
        """Remove ahead mode's copy: ours alone, so unconditionally."""
        if files.remove(self.ahead_path):
            self.chained_paths.discard(self.ahead_path)
            self.log("info", f"removed our {conflist.AHEAD_NAME}: {why}", conflist=self.ahead_path)

    def _remove_other_modes_files(self, mode: str) -> None:
        """Conflists another mode left: the runtime would load them before (or instead of) this mode's."""
        if mode != "ahead":
            self._remove_copy(f"MGW_MODE={mode}")
        removed = [] if mode == "standalone" else self._until_committed(self._unchain_standalone)
        if removed:
            self.log("info", f"removed our {conflist.STANDALONE_NAME}: MGW_MODE={mode}", conflist=self.standalone_path)

    def _chain_primary(self) -> str | None:
        """One round: 'waiting', 'unchanged' or 'written'; None when a file changed under us."""
        entry = self.settings.plugin_entry()
        snapshot = self._conf_files()
        primary = conflist.choose_primary(snapshot)
        if primary is None:
            return "waiting"
        if self._holds_entry(primary):
            return "unchanged"
        directory = self.settings.cni_net_dir
        target = os.path.join(directory, conflist.target_name(primary))
        data = conflist.render(conflist.with_entry(primary.document, entry))
        if not primary.was_single:
            if not files.replace_if_unchanged(target, primary.raw, data):
                return None
        else:
            # Our .conflist first (the .conf sorts before it and is still the one loaded), then the .conf
            # parked: one of the two is always there. The .conflist beside it (ours from before, or absent)
            # must also still be what we read.
            if not _write_if_unchanged(target, snapshot.get(conflist.target_name(primary)), data):
                return None
            if not files.move_if_unchanged(os.path.join(directory, primary.name), primary.raw,
                                           os.path.join(directory, primary.name + PARKED_SUFFIX)):
                return None  # the agent rewrote its .conf: it still wins; the next round derives from it
        self.chained_paths.add(target)
        self.log("info", "plugin chained", conflist=target, primary=primary.name)
        return "written"

    def _holds_entry(self, primary: conflist.Primary) -> bool:
        """The primary is a .conflist with our current entry, once and last: nothing to write."""
        return not primary.was_single and conflist.is_chained(primary.document, self.settings.plugin_entry())

    def _back_off_if_reverted(self) -> None:
        """Count a file we chained that lost our entry; past the threshold, warn and pause.

        Once per chain(), before its rounds: what is read here only decides the pause and is never written.
        """
        path = self._lost_entry()
        if path is None or path not in self.chained_paths:
            return
        now = self.clock.monotonic()
        self.reverts.append(now)
        while self.reverts and now - self.reverts[0] > REVERT_WINDOW_SECONDS:
            self.reverts.popleft()
        self.on_revert()
        count = len(self.reverts)
        self.log("info", "chained entry was removed by another agent; re-inserting", conflist=path)
        if count < self.settings.revert_warning_threshold:
            return
        self.log("warn", f"{path} was reverted {count} times in {REVERT_WINDOW_SECONDS:.0f}s: another agent keeps "
                 "rewriting the CNI configuration (e.g. Cilium with cni.exclusive=true, or a primary CNI that "
                 "owns the file); configure it to allow chaining or use MGW_MODE=standalone",
                 reverts=count)
        self.clock.sleep(min(0.5 * (count - self.settings.revert_warning_threshold + 1), 10.0))

    def _lost_entry(self) -> str | None:
        """The file that should hold our entry if it does not, else None."""
        if self.settings.mode == "ahead":
            ahead = conflist.parse(conflist.AHEAD_NAME, files.read(self.ahead_path) or b"")
            if ahead is not None and conflist.is_chained(ahead.document, self.settings.plugin_entry()):
                return None
            return self.ahead_path
        primary = conflist.choose_primary(self._conf_files())
        if primary is None or self._holds_entry(primary):
            return None
        return os.path.join(self.settings.cni_net_dir, conflist.target_name(primary))

    def reconcile(self) -> str:
        with self._lock:
            if self._uninstalled:  # a change event that raced SIGTERM's uninstall must not reinstall
                return "unchanged"
            self.install_binary()
            self.write_kubeconfig()
            return self.chain()

    # -- readiness and uninstall ---------------------------------------------------------------------
    def ready(self) -> bool:
        if self.bundle_error is not None:
            return False
        if not os.path.exists(self.binary_path) or not os.path.exists(self.kubeconfig_path):
            return False
        if self.settings.mode == "standalone":
            expected = conflist.render(conflist.standalone(self.settings.plugin_entry()))
            return files.read(self.standalone_path) == expected
        if self.settings.mode == "manual":
            return True
        primary = conflist.choose_primary(self._conf_files())
        if self.settings.mode == "ahead":
            document = None if primary is None else conflist.ahead(primary, self.settings.plugin_entry())
            return document is not None and files.read(self.ahead_path) == conflist.render(document)
        return primary is not None and self._holds_entry(primary)

    def uninstall(self) -> bool:
        """Remove our entry (or our own conflist) and the kubeconfig; keep the binary for later DELs.

        Files are changed conditionally, like in chain(). False when an entry of ours could not be
        removed: then the kubeconfig stays, since the plugin it configures is still being called.
        """
        with self._lock:
            self._uninstalled = True
            self._recover()
            if self.settings.mode != "manual":
                self._remove_copy("uninstalled")
                rounds = [self._unchain_standalone] + ([] if self.settings.mode == "standalone" else [self._unchain])
                unfinished = any(self._until_committed(unchain) is None for unchain in rounds)
                self._warn_once_if_exchange_refused()
                if unfinished:
                    self.log("error", "the CNI configuration kept changing; our entry may still be in it, so the "
                             "kubeconfig stays", dir=self.settings.cni_net_dir, attempts=COMMIT_ATTEMPTS)
                    return False
            files.remove(self.kubeconfig_path)
            self.chained_paths.clear()
            self.log("info", "uninstalled; binary kept for DEL of remaining pods", binary=self.binary_path)
            return True

    def _unchain_standalone(self) -> list[str] | None:
        """One round: the paths it removed ([] if our standalone file is gone already); None when it changed."""
        current = files.read(self.standalone_path)
        if current is None:
            return []
        return [self.standalone_path] if files.remove_if_unchanged(self.standalone_path, current) else None

    def _unchain(self) -> list[str] | None:
        """One round over the config files, each read just before its change: the paths it unchained, or
        None when one of them changed under us."""
        directory = self.settings.cni_net_dir
        unchained: list[str] = []
        complete = True
        for name, data in self._conf_files().items():
            parsed = None if name in conflist.OWN_NAMES else conflist.parse(name, data)
            if parsed is None or not conflist.has_entry(parsed.document):
                continue
            path = os.path.join(directory, name)
            stem = path.rsplit(".", 1)[0]
            parked = [stem + ext + PARKED_SUFFIX for ext in (".conf", ".json")
                      if os.path.exists(stem + ext + PARKED_SUFFIX)]
            if parked:
                # The parked file comes back before our .conflist goes: never a moment without a primary.
                files.put_back(parked[0], parked[0].removesuffix(PARKED_SUFFIX))
                removed = files.remove_if_unchanged(path, data)
            else:
                removed = files.replace_if_unchanged(path, data, conflist.render(conflist.without_entry(
                    parsed.document)))
            if removed:
                unchained.append(path)
                self.log("info", "plugin unchained", conflist=path)
            complete = complete and removed
        return unchained if complete else None
