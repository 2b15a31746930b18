"""nf_tables over netlink with hand-built messages: one batch per write, dumps for reads.

Why not pyroute2 on this path (docs/design.md, "nftables backend"): its nf_tables socket imports the
whole package, which does not fit the ADD budget; the plugin needs a handful of message and
expression types whose layout is the kernel's UAPI (linux/netfilter/nf_tables.h, nfnetlink.h), so
they are built here with struct. pyroute2 decodes the same tables independently in the tests
(tests/integration/test_nftables.py), which keeps this module and encoder.py honest.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from cni.errors import NETFILTER_FAILURE, CniError

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id (big endian)
RECV_BUFFER = 1 << 18

# NFT_MSG_* (nf_tables.h)
NEWTABLE, GETTABLE, DELTABLE, NEWCHAIN, GETCHAIN, DELCHAIN, NEWRULE, GETRULE = range(8)
NFPROTO_UNSPEC, NFPROTO_IPV4, NFPROTO_IPV6 = 0, 2, 10


TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    # (NFT_MSG_* command, NFPROTO_* family, extra nlmsg flags, attributes, what it does for errors)
    Command = tuple[int, int, int, bytes, str | Callable[[], str]]


class NetlinkError(CniError):
    """A netlink request the kernel refused, with its errno."""

    def __init__(self, what: str, err: int) -> None:
        super().__init__(NETFILTER_FAILURE, f"{what}: {os.strerror(err)}", f"errno {err}")
        self.errno = err


class StaleBatch(NetlinkError):
    """The batch met a table or chain that came (EEXIST) or went (ENOENT) since we looked."""


# The kernel has no nf_tables (or may not load it): nothing of ours can exist there.
UNSUPPORTED = (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT)


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def nest(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def be32(kind: int, value: int) -> bytes:
    """nf_tables sends integers big endian; negative ones (verdicts, priorities) as two's complement."""
    return attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def attributes(data: bytes) -> list[tuple[int, bytes]]:
    """A run of netlink attributes as (type without flags, payload), in order."""
    found = []
    offset = 0
    while offset + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        if size < 4:
            break
        found.append((kind & NLA_TYPE_MASK, data[offset + 4:offset + size]))
        offset += (size + 3) & ~3
    return found


def text(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def int32(payload: bytes) -> int:
    value: int = struct.unpack(">i", payload[:4])[0]
    return value


class Reply:
    """One nf_tables object from a dump: its family and its attributes by type."""

    __slots__ = ("attrs", "family")

    def __init__(self, family: int, attrs: dict[int, bytes]) -> None:
        self.family = family
        self.attrs = attrs


def _message(msg_type: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = NFGEN.pack(family, 0, socket.htons(res_id)) + body
    return HEADER.pack(HEADER.size + len(payload), msg_type, flags, seq, 0) + payload


class Netlink:
    """A NETLINK_NETFILTER socket in the current netns, closed on exit."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise NetlinkError("cannot open a netfilter netlink socket", exc.errno or 0) from None
        self._seq = 1

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _messages(self, flags: int = 0) -> list[tuple[int, int, int, bytes]]:
        """The messages of one datagram: (type, flags, sequence, payload after nlmsghdr)."""
        try:
            data = self._sock.recv(RECV_BUFFER, flags)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise NetlinkError("cannot read from nf_tables", exc.errno or 0) from None
        messages = []
        offset = 0
        while offset + HEADER.size <= len(data):
            length, msg_type, flags, seq, _ = HEADER.unpack_from(data, offset)
            if length < HEADER.size:
                break
            messages.append((msg_type, flags, seq, data[offset + HEADER.size:offset + length]))
            offset += (length + 3) & ~3
        return messages

    def dump(self, command: int, family: int = NFPROTO_UNSPEC, body: bytes = b"") -> list[Reply]:
        """Every object a GET dump returns (NFPROTO_UNSPEC: of every family)."""
        seq = self._seq
        self._seq += 1
        self._send(_message((NFNL_SUBSYS_NFTABLES << 8) | command, NLM_F_REQUEST | NLM_F_DUMP, seq, family, body))
        replies: list[Reply] = []
        while True:
            for msg_type, _, got_seq, payload in self._messages():
                if got_seq != seq:
                    continue
                if msg_type == NLMSG_DONE:
                    return replies
                if msg_type == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise NetlinkError("cannot read the nftables state", err)
                    continue
                obj_family = payload[0]
                replies.append(Reply(obj_family, dict(attributes(payload[NFGEN.size:]))))

    def transact(self, commands: list[Command]) -> None:
        """Send (command, family, flags, body, description) as one batch: one transaction, all or nothing.

        The kernel handles a batch inside our send call, so when sendall returns every reply - an ack
        per message, the error of a failed message, of a failed commit or of a refused batch - is
        already queued on the socket; reading without blocking until it is empty collects them all."""
        first = self._seq
        parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)]
        descriptions: dict[int, str | Callable[[], str]] = {first: "commit"}
        for offset, (command, family, flags, body, description) in enumerate(commands, start=1):
            seq = first + offset
            descriptions[seq] = description
            parts.append(_message((NFNL_SUBSYS_NFTABLES << 8) | command, NLM_F_REQUEST | NLM_F_ACK | flags,
                                  seq, family, body))
        last = first + len(commands)
        parts.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last + 1, NFPROTO_UNSPEC, b"",
                              NFNL_SUBSYS_NFTABLES))
        self._seq = last + 2
        self._send(b"".join(parts))
        errors: list[tuple[int, int]] = []
        acked = False
        while replies := self._messages(socket.MSG_DONTWAIT):
            for msg_type, _, seq, payload in replies:
                if msg_type != NLMSG_ERROR or not first <= seq <= last:
                    continue
                err = -struct.unpack_from("=i", payload)[0]
                if err:
                    errors.append((seq, err))
                acked = acked or seq == last
        if errors:
            seq, err = errors[0]
            description = descriptions[seq]
            what = f"nftables transaction failed at {description if isinstance(description, str) else description()}"
            if err in (errno.EEXIST, errno.ENOENT):
                raise StaleBatch(what, err)
            raise NetlinkError(what, err)
        if not acked:
            raise CniError(NETFILTER_FAILURE, "nftables transaction not acknowledged by the kernel")

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise NetlinkError("cannot send to nf_tables", exc.errno or 0) from None
