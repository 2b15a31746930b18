"""Re-reconcile whenever the CNI config dir, the bin dir or the service-account dir changes (inotify)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from inotify_simple import INotify
from inotify_simple import flags as f

MASK = f.CREATE | f.MODIFY | f.CLOSE_WRITE | f.MOVED_TO | f.MOVED_FROM | f.DELETE | f.DELETE_SELF | f.ATTRIB
DEBOUNCE_MS = 20
RESYNC_MS = 10_000  # a periodic reconcile also covers anything inotify cannot see


def watch(directories: list[str], reconcile: Callable[[], None], stop: threading.Event) -> None:
    """Run reconcile once, then after every burst of changes; our own writes settle as no-ops."""
    inotify = INotify()
    try:
        for directory in directories:
            if os.path.isdir(directory):
                # The service-account dir swaps its ..data symlink on token rotation: MOVED_TO/CREATE.
                inotify.add_watch(directory, MASK)
        reconcile()
        while not stop.is_set():
            events = inotify.read(timeout=RESYNC_MS)
            if events:
                inotify.read(timeout=DEBOUNCE_MS)  # drain the rest of the burst
            if not stop.is_set():
                reconcile()
    finally:
        inotify.close()
