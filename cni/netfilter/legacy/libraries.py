"""Where iptables' C libraries and extension modules are: the bundle's copies in the built binaries
(scripts/pyinstaller/frozen.py sets the variables), else the distribution's."""

from __future__ import annotations

import functools
import os

# Without XTABLES_LIBDIR and IPTABLES_LIBDIR python-iptables runs `ldconfig -v` and
# ctypes.util.find_library (subprocesses, on every import: python -X importtime shows them) and may
# pick a directory without the extensions.
LIBDIR_CANDIDATES = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu")


def locate() -> None:
    """Set XTABLES_LIBDIR and IPTABLES_LIBDIR unless the bundle or the caller did."""
    if "XTABLES_LIBDIR" in os.environ:
        return
    for libdir in LIBDIR_CANDIDATES:
        if os.path.exists(os.path.join(libdir, "xtables", "libxt_REDIRECT.so")):
            os.environ["XTABLES_LIBDIR"] = os.path.join(libdir, "xtables")
            os.environ.setdefault("IPTABLES_LIBDIR", libdir)
            return


def _library_dirs() -> list[str]:
    return [d for d in (*os.environ.get("IPTABLES_LIBDIR", "").split(":"), *LIBDIR_CANDIDATES) if d]


def library_path(filename: str) -> str:
    """The first library directory's copy of an exact file name (libip4tc.so.2), else the bare name."""
    locate()
    for libdir in _library_dirs():
        path = os.path.join(libdir, filename)
        if os.path.exists(path):
            return path
    return filename


# python-iptables resolves libc, libxtables and libip4tc/libip6tc through ctypes.util.find_library,
# which spawns gcc and ldconfig on every import: paid by every ADD's worker.
def find_library_fast(name: str) -> str | None:
    """ctypes.util.find_library without spawning gcc and ldconfig: a direct look in the library dirs."""
    if name == "c":
        return "libc.so.6"
    for libdir in _library_dirs():
        names = sorted(n for n in _shared_objects(libdir) if n.startswith(f"lib{name}.so"))
        if names:
            return os.path.join(libdir, names[0])
    return None


@functools.cache
def _shared_objects(libdir: str) -> tuple[str, ...]:
    try:
        return tuple(n for n in os.listdir(libdir) if ".so" in n)
    except OSError:
        return ()
