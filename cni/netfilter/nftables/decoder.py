"""Live nf_tables objects back into the model, for CHECK and diagnose: a rule's expressions become a
`Rule`, or `Unexpected` when they hold anything the model cannot express (the backend then reports
it as `Foreign`, so CHECK fails on it), and a chain's hook attributes its base-chain declaration.
"""

from __future__ import annotations

import struct

from cni.model import Rule
from cni.netfilter.nftables import nfnetlink as nl
from cni.netfilter.nftables import uapi
from cni.netfilter.nftables.syntax import text_address

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any


class Unexpected(Exception):
    """An expression sequence no rule of the model produces."""


def _data_value(payload: bytes) -> bytes:
    return dict(nl.attributes(payload)).get(uapi.DATA_VALUE, b"")


def rule_expressions(payload: bytes) -> list[tuple[str, dict[int, bytes]]]:
    """A rule's expressions as (name, attributes by type), in order."""
    decoded = []
    for _, element in nl.attributes(payload):
        fields = dict(nl.attributes(element))
        decoded.append((nl.text(fields.get(uapi.EXPR_NAME, b"")), dict(nl.attributes(fields.get(uapi.EXPR_DATA, b"")))))
    return decoded


def _u32(data: dict[int, bytes], key: int) -> int | None:
    value = data.get(key)
    return None if value is None else nl.int32(value)


def base_declaration(attrs: dict[int, bytes]) -> tuple[str, int | None, int | None, int | None] | None:
    """A live chain's (type, hook, priority, policy); None for a regular chain."""
    if uapi.CHAIN_HOOK not in attrs:
        return None
    hook = dict(nl.attributes(attrs[uapi.CHAIN_HOOK]))
    return (nl.text(attrs.get(uapi.CHAIN_TYPE, b"")), _u32(hook, uapi.HOOK_NUM), _u32(hook, uapi.HOOK_PRIORITY),
            _u32(attrs, uapi.CHAIN_POLICY))


def _network(value: bytes, mask: bytes | None) -> str:
    """The model's spelling of a matched address: "127.0.0.6/32"."""
    prefix = len(value) * 8 if mask is None else bin(int.from_bytes(mask, "big")).count("1")
    return f"{text_address(value)}/{prefix}"


def _compare(fields: dict[str, Any], loaded: tuple[Any, ...], mask: bytes | None, op: int | None, value: bytes,
             family: int) -> None:
    """Fold one cmp into the rule's fields; Unexpected for a comparison the model has no field for."""
    src_offset, dst_offset, length = uapi.ADDRESS[family]
    if (loaded == ("meta", uapi.META_L4PROTO) and op == uapi.CMP_EQ and len(value) == 1
            and value[0] in uapi.PROTOCOL_NAMES):
        fields["protocol"] = uapi.PROTOCOL_NAMES[value[0]]
    elif loaded == ("meta", uapi.META_IIFNAME) and op == uapi.CMP_EQ and "in_iface" not in fields:
        fields["in_iface"] = nl.text(value)
    elif loaded == ("meta", uapi.META_OIFNAME) and op == uapi.CMP_EQ and "out_iface" not in fields:
        fields["out_iface"] = nl.text(value)
    elif loaded == ("meta", uapi.META_SKUID) and op == uapi.CMP_EQ and len(value) == 4:
        fields["uid_owner"] = struct.unpack("=I", value)[0]
    elif (loaded in (("ct", uapi.CT_STATE), ("ct", uapi.CT_STATUS)) and op == uapi.CMP_NEQ and value == bytes(4)
          and mask is not None and len(mask) == 4 and "ctstate" not in fields):
        table = uapi.CT_STATES if loaded[1] == uapi.CT_STATE else uapi.CT_STATUSES
        bits = struct.unpack("=I", mask)[0]
        names = [name for name, bit in table.items() if bits & bit]
        if sum(table[name] for name in names) != bits:
            raise Unexpected(f"ct bits {bits:#x}")
        fields["ctstate"] = ",".join(names)
    elif loaded == ("payload", uapi.NETWORK_HEADER, src_offset, length) and op == uapi.CMP_EQ:
        fields["src"] = _network(value, mask)
    elif loaded == ("payload", uapi.NETWORK_HEADER, dst_offset, length) and op == uapi.CMP_EQ:
        fields["dst"] = _network(value, mask)
    elif (loaded == ("payload", uapi.TRANSPORT_HEADER, uapi.DPORT_OFFSET, 2)
          and fields.get("protocol") in uapi.PORT_PROTOCOLS
          and len(value) == 2 and mask is None):
        port = struct.unpack(">H", value)[0]
        if op == uapi.CMP_EQ and "dport" not in fields:
            fields["dport"] = str(port)
        elif op == uapi.CMP_GTE and "dport" not in fields:
            fields["dport"] = f"{port}:"
        elif op == uapi.CMP_LTE and str(fields.get("dport", "")).endswith(":"):
            fields["dport"] += str(port)
        else:
            raise Unexpected(f"port comparison {op}")
    else:
        raise Unexpected(f"comparison {op} of {loaded}")


def _verdict_target(data: dict[int, bytes]) -> str:
    immediate = dict(nl.attributes(data.get(uapi.IMMEDIATE_DATA, b"")))
    attributes = dict(nl.attributes(immediate.get(uapi.DATA_VERDICT, b"")))
    code = _u32(attributes, uapi.VERDICT_CODE)
    if code == uapi.JUMP:
        return nl.text(attributes.get(uapi.VERDICT_CHAIN, b""))
    if code in uapi.VERDICT_NAMES:
        return uapi.VERDICT_NAMES[code]
    raise Unexpected(f"verdict {code}")


def decode(chain: str, family: int, payload: bytes) -> Rule:
    """A live rule back into the model; Unexpected when it holds anything the model cannot express."""
    fields: dict[str, Any] = {"chain": chain, "protocol": None}
    loaded: tuple[Any, ...] = ()
    mask: bytes | None = None
    for name, data in rule_expressions(payload):
        if "target" in fields:
            raise Unexpected(f"{name} after the verdict")
        if name == "meta" and _u32(data, uapi.META_DREG) == uapi.REG_1:
            loaded, mask = ("meta", _u32(data, uapi.META_KEY)), None
        elif name == "ct" and _u32(data, uapi.CT_DREG) == uapi.REG_1:
            loaded, mask = ("ct", _u32(data, uapi.CT_KEY)), None
        elif name == "payload" and _u32(data, uapi.PAYLOAD_DREG) == uapi.REG_1:
            loaded, mask = ("payload", _u32(data, uapi.PAYLOAD_BASE), _u32(data, uapi.PAYLOAD_OFFSET),
                            _u32(data, uapi.PAYLOAD_LEN)), None
        elif (name == "bitwise" and loaded and mask is None and uapi.BITWISE_MASK in data
              and _data_value(data.get(uapi.BITWISE_XOR, b"")) == bytes(len(_data_value(data[uapi.BITWISE_MASK])))):
            mask = _data_value(data[uapi.BITWISE_MASK])
        elif name == "cmp" and _u32(data, uapi.CMP_SREG) == uapi.REG_1 and loaded:
            _compare(fields, loaded, mask, _u32(data, uapi.CMP_OP), _data_value(data.get(uapi.CMP_DATA, b"")), family)
        elif name == "immediate" and _u32(data, uapi.IMMEDIATE_DREG) == uapi.REG_1:
            loaded, mask = ("value", _data_value(data.get(uapi.IMMEDIATE_DATA, b""))), None
        elif (name == "redir" and loaded[:1] == ("value",) and len(loaded[1]) == 2
              and _u32(data, uapi.REDIR_REG_PROTO_MIN) == uapi.REG_1
              and _u32(data, uapi.REDIR_REG_PROTO_MAX) in (None, uapi.REG_1)  # the kernel reports max = min
              and set(data) <= {uapi.REDIR_REG_PROTO_MIN, uapi.REDIR_REG_PROTO_MAX, uapi.REDIR_FLAGS}):
            fields["target"], fields["to_port"] = "REDIRECT", struct.unpack(">H", loaded[1])[0]
        elif name == "immediate" and _u32(data, uapi.IMMEDIATE_DREG) == uapi.REG_VERDICT:
            fields["target"] = _verdict_target(data)
        else:
            raise Unexpected(f"expression {name}")
    if "target" not in fields:
        raise Unexpected("no verdict")
    if str(fields.get("dport", "")).endswith(":"):
        raise Unexpected("open port range")
    return Rule(**fields)
