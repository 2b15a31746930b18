"""Removing our chains and the jumps into them with libiptc directly, any family and table in this process.

python-iptables' import is slow (ctypes structure classes for every xtables version) and its
xtables state forces a forked worker per family. Removal
needs neither matches nor targets, only libiptc's chain and rule handles, so DEL - on every pod
deletion - and the rollback of a failed ADD use these libiptc calls instead. Adding and reading
rules stays with python-iptables.

Like python-iptables, everything goes into one handle per table and family that is committed as a
single table replace, so a removal is never half done (I6). Which rules are ours is cni/model.py's
`ours_in`; the retry on a concurrent writer is cni/netfilter/backend.py's `retrying`.
"""

from __future__ import annotations

import ctypes
import errno

from cni.errors import NETFILTER_FAILURE, CniError
from cni.model import ours_in
from cni.netfilter.backend import Conflict
from cni.netfilter.legacy.libraries import library_path

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

LIBRARIES = {4: ("libip4tc.so.2", "iptc_"), 6: ("libip6tc.so.2", "ip6tc_")}
HANDLE, ENTRY, NAME = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p

SIGNATURES = {  # libiptc.h: name -> (result type, argument types); handles and entries opaque
    "init": (HANDLE, [NAME]),
    "free": (None, [HANDLE]),
    "first_chain": (NAME, [HANDLE]),
    "next_chain": (NAME, [HANDLE]),
    "first_rule": (ENTRY, [NAME, HANDLE]),
    "next_rule": (ENTRY, [ENTRY, HANDLE]),
    "get_target": (NAME, [ENTRY, HANDLE]),
    "delete_num_entry": (ctypes.c_int, [NAME, ctypes.c_uint, HANDLE]),
    "flush_entries": (ctypes.c_int, [NAME, HANDLE]),
    "delete_chain": (ctypes.c_int, [NAME, HANDLE]),
    "commit": (ctypes.c_int, [HANDLE]),
    "strerror": (NAME, [ctypes.c_int]),
}


class Libiptc:
    """libip4tc or libip6tc, its functions under family-neutral names (libiptc.h)."""

    init: Any
    free: Any
    first_chain: Any
    next_chain: Any
    first_rule: Any
    next_rule: Any
    get_target: Any
    delete_num_entry: Any
    flush_entries: Any
    delete_chain: Any
    commit: Any
    strerror: Any

    def __init__(self, family: int) -> None:
        filename, prefix = LIBRARIES[family]
        try:
            cdll = ctypes.CDLL(library_path(filename), use_errno=True)
        except OSError as exc:
            raise CniError(NETFILTER_FAILURE, f"cannot load {filename}: {exc}") from None
        for name, (restype, argtypes) in SIGNATURES.items():
            function = getattr(cdll, prefix + name)
            function.restype, function.argtypes = restype, argtypes
            setattr(self, name, function)

    def failure(self, what: str) -> CniError:
        """A CniError for the call that just failed, with libiptc's explanation of errno."""
        err = ctypes.get_errno()
        return CniError(NETFILTER_FAILURE, f"{what}: {self.strerror(err).decode(errors='replace')}", f"errno {err}")


def _targets(lib: Libiptc, handle: int) -> dict[str, list[str]]:
    """Every chain of the table and its rules' targets, in order."""
    targets: dict[str, list[str]] = {}
    chain = lib.first_chain(handle)
    while chain:
        targets[chain.decode()] = []
        chain = lib.next_chain(handle)
    for name, found in targets.items():
        entry = lib.first_rule(name.encode(), handle)
        while entry:
            found.append((lib.get_target(entry, handle) or b"").decode())
            entry = lib.next_rule(entry, handle)
    return targets


def _remove_in_handle(lib: Libiptc, handle: int, table: str) -> bool:
    jumps, chains = ours_in(table, _targets(lib, handle))
    for builtin, index in jumps:
        if not lib.delete_num_entry(builtin.encode(), index, handle):
            raise lib.failure(f"cannot delete the jump in {builtin} at position {index + 1}")
    for chain in chains:  # all flushed before any is deleted: our chains jump to each other
        if not lib.flush_entries(chain.encode(), handle):
            raise lib.failure(f"cannot flush {chain}")
    for chain in chains:
        if not lib.delete_chain(chain.encode(), handle):
            raise lib.failure(f"cannot delete {chain}")
    return bool(jumps or chains)


def remove_ours(family: int, table: str) -> bool:
    """One attempt: everything of ours out of one table in one commit; True if anything was there.
    Call inside the pod netns, through `retrying` (Conflict means: try again)."""
    lib = Libiptc(family)
    handle = lib.init(table.encode())
    if not handle:
        raise lib.failure(f"cannot open the IPv{family} {table} table")
    try:
        if not _remove_in_handle(lib, handle, table):
            return False
        if lib.commit(handle):
            return True
        if ctypes.get_errno() == errno.EAGAIN:
            raise Conflict(f"IPv{family} {table} table changed under our commit")
        raise lib.failure(f"remove: IPv{family} {table} commit failed")
    finally:
        lib.free(handle)
