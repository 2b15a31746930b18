"""Removing our chains and the jumps into them with libiptc directly, both families in this process.

python-iptables' import costs 25-35 ms per process (ctypes structure classes for every xtables
version, measured with cProfile), and its xtables state forces a forked worker per family. Removal
needs neither matches nor targets, only libiptc's chain and rule handles, so DEL - on every pod
deletion - and the rollback of a failed ADD use these libiptc calls instead. Adding and reading
rules stays with python-iptables.

Like python-iptables, everything goes into one handle per family that is committed as a single
table replace, so a removal is never half done (I6).
"""

from __future__ import annotations

import ctypes
import errno

from cni.errors import NETFILTER_FAILURE, CniError
from cni.libraries import library_path
from cni.rules import BUILTIN_JUMPS, CHAIN_PREFIX

TYPE_CHECKING = False  # typing costs ~8 ms of a frozen start (cni/records.py): annotations only
if TYPE_CHECKING:
    from typing import Any

COMMIT_ATTEMPTS = 3
LIBRARIES = {4: ("libip4tc.so.2", "iptc_"), 6: ("libip6tc.so.2", "ip6tc_")}
PREFIX = CHAIN_PREFIX.encode()
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


def _jumps_to_ours(lib: Libiptc, handle: int, chain: bytes) -> list[int]:
    numbers = []
    entry, number = lib.first_rule(chain, handle), 0
    while entry:
        if (lib.get_target(entry, handle) or b"").startswith(PREFIX):
            numbers.append(number)
        entry, number = lib.next_rule(entry, handle), number + 1
    return numbers


def _our_chains(lib: Libiptc, handle: int) -> list[bytes]:
    chains = []
    name = lib.first_chain(handle)
    while name:
        if name.startswith(PREFIX):
            chains.append(name)
        name = lib.next_chain(handle)
    return chains


def _remove_in_handle(lib: Libiptc, handle: int) -> bool:
    """What netfilter._remove_ours drops inside ADD's python-iptables handle, here for DEL and rollback."""
    found = False
    for builtin, _ in BUILTIN_JUMPS:
        numbers = _jumps_to_ours(lib, handle, builtin.encode())
        for number in reversed(numbers):  # from the end, so the numbers before stay valid
            if not lib.delete_num_entry(builtin.encode(), number, handle):
                raise lib.failure(f"cannot delete the jump in {builtin} at position {number + 1}")
        found = found or bool(numbers)
    ours = _our_chains(lib, handle)
    for chain in ours:  # all flushed before any is deleted: our chains jump to each other
        if not lib.flush_entries(chain, handle):
            raise lib.failure(f"cannot flush {chain.decode()}")
    for chain in ours:
        if not lib.delete_chain(chain, handle):
            raise lib.failure(f"cannot delete {chain.decode()}")
    return found or bool(ours)


def remove_ours(family: int) -> bool:
    """Remove every jump to an MGW_ chain and every MGW_ chain from the nat table in one commit;
    True if anything was there. Call inside the pod netns."""
    lib = Libiptc(family)
    attempt = 1
    while True:
        handle = lib.init(b"nat")
        if not handle:
            raise lib.failure(f"cannot open the IPv{family} nat table")
        try:
            if not _remove_in_handle(lib, handle):
                return False
            if lib.commit(handle):
                return True
            # EAGAIN: another writer replaced the table since our snapshot; take a new one
            if ctypes.get_errno() != errno.EAGAIN or attempt == COMMIT_ATTEMPTS:
                raise lib.failure(f"remove: IPv{family} nat commit failed")
        finally:
            lib.free(handle)
        attempt += 1
