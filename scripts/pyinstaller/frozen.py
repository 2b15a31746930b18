"""Run-time set-up of the self-contained binaries (PyInstaller): a node has no Python and no iptables.

Each bundle's entry point (<name>.py, beside it) runs `prepare` first. Outside a bundle it does
nothing, so it lives with the bundles' build, not in one of the three packages it serves.

The bundle carries libxtables, libip4tc/libip6tc and every xtables extension module; python-iptables
finds them through XTABLES_LIBDIR/IPTABLES_LIBDIR, set here and not by the caller.

The file the kubelet executes is a static launcher (scripts/launcher/launcher.c) that starts
PyInstaller's bootloader (`<name>.bootloader`) through the bundle's own dynamic loader and glibc. The
launcher moves the caller's LD_LIBRARY_PATH/LD_PRELOAD aside and the bootloader points LD_LIBRARY_PATH at
the bundle; children (python-iptables runs modprobe) get the caller's values back, and sys.executable
and sys.argv[0] name the launcher, so a re-execution goes through it and usage texts show the real name.
"""

from __future__ import annotations

import os
import sys

BOOTLOADER_SUFFIX = ".bootloader"
CALLER_VARIABLES = ("LD_LIBRARY_PATH", "LD_PRELOAD")


def prepare() -> None:
    bundle = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or bundle is None:
        return
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original
    for name in CALLER_VARIABLES:
        value = os.environ.pop(f"MGW_CALLER_{name}", None)
        if value is not None:
            os.environ[name] = value
    sys.executable = sys.executable.removesuffix(BOOTLOADER_SUFFIX)
    sys.argv[0] = sys.argv[0].removesuffix(BOOTLOADER_SUFFIX)
    os.environ["XTABLES_LIBDIR"] = os.path.join(bundle, "xtables")
    os.environ["IPTABLES_LIBDIR"] = os.path.join(bundle, "iptables-lib")
