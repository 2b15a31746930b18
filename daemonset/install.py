"""Install, keep chained and uninstall microgateway-cni on this node (the I/O around daemonset.conflist)."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from daemonset import conflist, files, foreign_files, kubeconfig
from daemonset.binaries import PluginBinary
from daemonset.clock import Clock, SystemClock
from daemonset.settings import Settings

PARKED_SUFFIX = ".mgw-original"  # not a CNI extension: libcni ignores the parked single-plugin .conf
REVERT_WINDOW_SECONDS = 60.0
COMMIT_ATTEMPTS = 10  # read-derive-commit rounds of one chain() or uninstall() while others keep changing files
T = TypeVar("T")


def _write_if_unchanged(path: str, as_read: bytes | None, data: bytes) -> bool:
    """Commit `data` only if `path` is still as we read it: absent (None), or holding `as_read`."""
    if as_read is None:
        return foreign_files.create_if_absent(path, data)
    return foreign_files.replace_if_unchanged(path, as_read, data)


class Installer:
    """One node's installation: the plugin binary, its kubeconfig and our place in the CNI configuration
    (per MGW_MODE), reconciled on every change and removed on uninstall (but the binary).

    Every file another agent owns is written by compare-and-swap (docs/design.md, "Writing files we do
    not own"); `chained_paths` and `reverts` tell an agent that keeps removing our entry apart from a
    one-off change. The watch thread's reconcile and SIGTERM's uninstall are serialized by one lock.
    """

    def __init__(self, settings: Settings, log: Callable[..., None],
                 on_revert: Callable[[], None] = lambda: None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.log = log
        self.on_revert = on_revert
        self.chained_paths: set[str] = set()  # conflists we wrote our entry into: a later loss of it is a revert
        self.binary = PluginBinary(settings, log)
        self.blocked: str | None = None  # why ahead mode cannot put its copy first, while it cannot
        self._ahead_source: str | None = None  # the primary's file name our ahead copy was made from
        self._unparsable: str | None = None  # that file, while it does not parse
        self.reverts: deque[float] = deque()
        self._lock = threading.RLock()  # the watch thread's reconcile and SIGTERM's uninstall never interleave
        self._uninstalled = False
        self._warned_fallback = False

    # -- paths -------------------------------------------------------------------------------------
    @property
    def kubeconfig_path(self) -> str:
        return kubeconfig.kubeconfig_path(self.settings)

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
    def chain(self) -> str:
        """Make the configuration contain our entry; returns 'unchanged', 'written', 'waiting', 'blocked' or
        'contended'.

        Every write is derived from a read made just before it and committed only if the file still
        holds what was read (foreign_files.replace_if_unchanged); the revert back-off comes first, so nothing
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
        for name in foreign_files.recover(self.settings.cni_net_dir):
            self.log("info", "put back a CNI configuration an interrupted write had displaced", conflist=name)

    def _warn_once_if_exchange_refused(self) -> None:
        fallback = foreign_files.exchange_fallback()
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
            if not foreign_files.replace_if_unchanged(target, primary.raw, data):
                return None
        else:
            # Our .conflist first (the .conf sorts before it and is still the one loaded), then the .conf
            # parked: one of the two is always there. The .conflist beside it (ours from before, or absent)
            # must also still be what we read.
            if not _write_if_unchanged(target, snapshot.get(conflist.target_name(primary)), data):
                return None
            if not foreign_files.move_if_unchanged(os.path.join(directory, primary.name), primary.raw,
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
            self.binary.install()
            kubeconfig.write_kubeconfig(self.settings, self.log)
            return self.chain()

    # -- readiness and uninstall ---------------------------------------------------------------------
    def ready(self) -> bool:
        if self.binary.error is not None:
            return False
        if not os.path.exists(self.binary.path) or not os.path.exists(self.kubeconfig_path):
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
            self.log("info", "uninstalled; binary kept for DEL of remaining pods", binary=self.binary.path)
            return True

    def _unchain_standalone(self) -> list[str] | None:
        """One round: the paths it removed ([] if our standalone file is gone already); None when it changed."""
        current = files.read(self.standalone_path)
        if current is None:
            return []
        return [self.standalone_path] if foreign_files.remove_if_unchanged(self.standalone_path, current) else None

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
                foreign_files.put_back(parked[0], parked[0].removesuffix(PARKED_SUFFIX))
                removed = foreign_files.remove_if_unchanged(path, data)
            else:
                removed = foreign_files.replace_if_unchanged(path, data, conflist.render(conflist.without_entry(
                    parsed.document)))
            if removed:
                unchained.append(path)
                self.log("info", "plugin unchained", conflist=path)
            complete = complete and removed
        return unchained if complete else None
