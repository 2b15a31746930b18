"""The plugin on the node: copied from the image into the CNI bin dir, and proven to run there before
the runtime is pointed at it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable

from cni.contract import PLUGIN_TYPE
from daemonset import files
from daemonset.settings import Settings

VERIFY_TIMEOUT_SECONDS = 30.0


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


class PluginBinary:
    """The plugin executable in the CNI bin dir, installed from the image's copy (a single file, or a
    PyInstaller one-dir bundle behind a symlink); `error` says why the image's bundle cannot run here."""

    def __init__(self, settings: Settings, log: Callable[..., None]) -> None:
        self.settings = settings
        self.log = log
        self.error: str | None = None
        self._bundle_digest: str | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.settings.cni_bin_dir, PLUGIN_TYPE)

    def install(self) -> bool:
        """True if it installed a new version, False if the one in place is current (or must stay)."""
        source = self.settings.plugin_binary
        if os.path.isdir(os.path.join(os.path.dirname(source), "_internal")):
            return self._install_bundle(os.path.dirname(source))
        # A symlink (e.g. into a container's filesystem) is not an installation, whatever it points to.
        if not os.path.islink(self.path) and files.digest(self.path) == files.digest(source):
            return False
        files.copy_atomic(source, self.path)
        self.log("info", "plugin binary installed", path=self.path)
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
            previous = os.readlink(self.path)
        except OSError:
            previous = ""
        if previous == link_target and os.path.isfile(os.path.join(bin_dir, link_target)):
            return False
        if not os.path.isdir(os.path.join(bin_dir, version_dir)):
            files.copy_tree_atomic(source_dir, os.path.join(bin_dir, version_dir))
        error = verify_plugin(os.path.join(bin_dir, link_target))
        if error is not None:
            if error != self.error:
                self.log("error", "the plugin bundle cannot run on this node; keeping the previous plugin and "
                         "staying not ready", bundle=os.path.join(bin_dir, version_dir), error=error,
                         previous=previous or None)
            self.error = error
            if not os.path.exists(self.path):  # nothing to keep: never chain a plugin that is not there
                raise RuntimeError(f"no runnable plugin installed: {error}")
            return False
        self.error = None
        files.symlink_atomic(link_target, self.path)
        keep = {version_dir, previous.split(os.sep)[0]}
        for name in os.listdir(bin_dir):
            if name.startswith(f".{PLUGIN_TYPE}-") and name not in keep and os.path.isdir(os.path.join(bin_dir, name)):
                shutil.rmtree(os.path.join(bin_dir, name), ignore_errors=True)
        self.log("info", "plugin bundle installed", path=self.path, version=version_dir)
        return True
