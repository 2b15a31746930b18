"""Entering a pod's network namespace in-process (setns), never by spawning a shell; what the pod has there."""

from __future__ import annotations

import ctypes
import errno
import os

from cni.errors import INVALID_ENV, CniError

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NS_GET_USERNS = 0xB701  # linux/nsfs.h: _IO(0xb7, 0x1)
NSFS_MAGIC = 0x6E736673


class NetnsGone(CniError):
    """The namespace path does not exist (any more): the caller's error on ADD and CHECK, success on DEL."""

    def __init__(self, path: str) -> None:
        super().__init__(INVALID_ENV, f"CNI_NETNS {path!r} does not exist")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def enter(path: str) -> None:
    """Move this (single-threaded) process into the netns at `path`.

    Refuses the namespace the plugin was started in: rewriting the node's own nat table would take
    the whole node's traffic with it, and no pod shares it (hostNetwork pods never reach CNI).
    A netns owned by a user namespace (a `hostUsers: false` pod) is entered together with that user
    namespace (enter_owner).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(path) from None
    except OSError as exc:
        raise CniError(INVALID_ENV, f"CNI_NETNS {path!r} cannot be opened: {exc.strerror}") from None
    try:
        if _same_file(os.fstat(fd), os.stat("/proc/self/ns/net")):
            raise CniError(INVALID_ENV, f"CNI_NETNS {path!r} is the runtime's own network namespace; refusing")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                raise CniError(INVALID_ENV, f"CNI_NETNS {path!r} is not a network namespace")
            raise CniError(INVALID_ENV, f"CNI_NETNS {path!r}: setns failed: {os.strerror(err)}")
        enter_owner(fd, path, libc)
    finally:
        os.close(fd)


def enter_owner(netns_fd: int, path: str, libc: ctypes.CDLL) -> None:
    """Join the user namespace that owns the netns, when it is not ours (docs/design.md, "User
    namespaces").

    The kernel checks an owner match (`-m owner`, Istio's rules and ours in istio mode) against the
    writer's user namespace: from any other one, every commit of a table holding such a rule fails with
    EINVAL - ours to write, and Istio's already there on every later replace, DEL's included. Root
    of the node may join any user namespace below its own, keeping its capabilities inside it."""
    import fcntl

    try:
        owner = fcntl.ioctl(netns_fd, NS_GET_USERNS)
    except OSError as exc:
        raise CniError(INVALID_ENV, f"CNI_NETNS {path!r}: cannot find its user namespace: {exc.strerror}") from None
    try:
        if _same_file(os.fstat(owner), os.stat("/proc/self/ns/user")):
            return
        if libc.setns(owner, CLONE_NEWUSER) != 0:
            raise CniError(INVALID_ENV, f"CNI_NETNS {path!r} belongs to a user namespace (hostUsers: false) the "
                                        f"plugin cannot join ({os.strerror(ctypes.get_errno())}); its rules "
                                        "cannot be written from outside it")
    finally:
        os.close(owner)


def has_ipv6() -> bool:
    """True when the current netns has any IPv6 address, link-local and loopback included.

    Any IPv6 address is a path a client could use around an IPv4-only rule set (I1), so IPv6 gets
    rules whenever the kernel gives the pod IPv6 at all.
    """
    try:
        with open("/proc/self/net/if_inet6", "rb") as f:
            return bool(f.read(1))
    except FileNotFoundError:
        return False


def pod_families(ipv6_hint: bool) -> list[int]:
    """The families a pod gets rules for, in its netns: IPv6 too whenever it has any IPv6 address
    (has_ipv6) or the previous plugin's result names one."""
    return [4, 6] if ipv6_hint or has_ipv6() else [4]
