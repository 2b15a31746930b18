"""Run-time set-up of the self-contained binaries (PyInstaller): a node has no Python and no iptables.

The bundle carries libxtables, libip4tc/libip6tc and every xtables extension module; python-iptables
finds them through XTABLES_LIBDIR/IPTABLES_LIBDIR, set here and not by the caller. The bootloader
points LD_LIBRARY_PATH at the bundle; children (python-iptables runs modprobe) get the caller's back.
"""

from __future__ import annotations

import os
import sys


def prepare() -> None:
    bundle = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or bundle is None:
        return
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original
    os.environ["XTABLES_LIBDIR"] = os.path.join(bundle, "xtables")
    os.environ["IPTABLES_LIBDIR"] = os.path.join(bundle, "iptables-lib")
