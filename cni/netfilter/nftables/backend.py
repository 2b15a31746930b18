"""The native nftables backend: our rule sets as the tables `ip microgateway` and `ip6 microgateway`.

Layout (docs/design.md, "nftables backend"): per family one table, owned whole by us. For every
built-in chain a rule set jumps from, a base chain named `<table>-<chain>` (nat-PREROUTING: type nat,
hook prerouting, priority dstnat -100, policy accept) holds those jumps; the MGW_ chains hold the
rules, expression for expression. Removing ours is deleting the tables; nothing else is touched.

Writes are one netlink batch for every family and table (nfnetlink.py): the old tables deleted,
the new ones written, in one transaction (I6) - no fork per family, no rollback.
"""

from __future__ import annotations

import functools
import socket
import struct

from cni.errors import NETFILTER_FAILURE, CniError
from cni.model import BUILTIN_CHAINS, TABLES, Foreign, Live, Rule, RuleSet, by_family, is_ours
from cni.netfilter.backend import NFTABLES, Backend, Conflict, retrying
from cni.netfilter.nftables import nfnetlink as nl

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

TABLE = "microgateway"
FAMILIES = {4: nl.NFPROTO_IPV4, 6: nl.NFPROTO_IPV6}
FAMILY_NAMES = {nl.NFPROTO_IPV4: "ip", nl.NFPROTO_IPV6: "ip6"}
# (model table, built-in chain) -> (netfilter hook number, hook name, priority): the priorities of
# iptables' own tables (NF_IP_PRI_NAT_DST, NF_IP_PRI_NAT_SRC, NF_IP_PRI_FILTER), which Istio's native
# nftables chains use too.
HOOKS = {
    ("nat", "PREROUTING"): (0, "prerouting", -100),
    ("nat", "INPUT"): (1, "input", 100),
    ("nat", "OUTPUT"): (3, "output", -100),
    ("nat", "POSTROUTING"): (4, "postrouting", 100),
    ("filter", "INPUT"): (1, "input", 0),
    ("filter", "FORWARD"): (2, "forward", 0),
    ("filter", "OUTPUT"): (3, "output", 0),
}
# How `nft list` spells a standard priority (the rest it prints as numbers).
PRIORITY_NAMES = {("nat", "prerouting", -100): "dstnat", ("nat", "postrouting", 100): "srcnat",
                  ("filter", "input", 0): "filter", ("filter", "forward", 0): "filter",
                  ("filter", "output", 0): "filter"}

# nf_tables.h attribute numbers
TABLE_NAME = 1
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE = 1, 3, 4, 5, 7
HOOK_NUM, HOOK_PRIORITY = 1, 2
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS = 1, 2, 4
LIST_ELEM, EXPR_NAME, EXPR_DATA = 1, 1, 2
DATA_VALUE, DATA_VERDICT, VERDICT_CODE, VERDICT_CHAIN = 1, 2, 1, 2
META_DREG, META_KEY = 1, 2
CT_DREG, CT_KEY = 1, 2
PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN = 1, 2, 3, 4
CMP_SREG, CMP_OP, CMP_DATA = 1, 2, 3
BITWISE_SREG, BITWISE_DREG, BITWISE_LEN, BITWISE_MASK, BITWISE_XOR = 1, 2, 3, 4, 5
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
REDIR_REG_PROTO_MIN, REDIR_REG_PROTO_MAX, REDIR_FLAGS = 1, 2, 3
NF_DROP, NF_ACCEPT = 0, 1
NF_NAT_RANGE_PROTO_SPECIFIED = 2
REG_VERDICT, REG_1 = 0, 1
META_IIFNAME, META_OIFNAME, META_SKUID, META_L4PROTO = 6, 7, 10, 16
CT_STATE, CT_STATUS = 0, 2
NETWORK_HEADER, TRANSPORT_HEADER = 1, 2
CMP_EQ, CMP_NEQ, CMP_LT, CMP_LTE, CMP_GT, CMP_GTE = range(6)
IFNAMSIZ = 16
VERDICTS = {"RETURN": -5, "ACCEPT": NF_ACCEPT, "DROP": NF_DROP}
JUMP = -3
VERDICT_NAMES = {code: name for name, code in VERDICTS.items()}
ADDRESS = {4: (12, 16, 4), 6: (8, 24, 16)}  # family -> (saddr offset, daddr offset, length)
DPORT_OFFSET = 2  # the same in TCP, UDP and SCTP headers
# -p names (as iptables-save prints them, the model's) -> IP protocol numbers
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
# conntrack states in the order iptables-save prints them, and their bits in `ct state`
CT_STATES = {"INVALID": 1, "NEW": 8, "RELATED": 4, "ESTABLISHED": 2, "UNTRACKED": 64}
# --ctstate's NAT pseudo-states are `ct status` bits (IPS_SRC_NAT, IPS_DST_NAT): a connection that a
# REDIRECT (a destination NAT) took carries dnat.
CT_STATUSES = {"SNAT": 0x10, "DNAT": 0x20}


def base_chain(table: str, builtin: str) -> str:
    """Our base chain for a model table's built-in chain: nat-PREROUTING, filter-INPUT."""
    return f"{table}-{builtin}"


BASE_CHAINS = {base_chain(table, builtin): (table, builtin) for table, builtin in HOOKS}
HOOK_NAMES = {number: name for number, name, _ in HOOKS.values()}


# -- building ----------------------------------------------------------------------------------------
def expr(name: str, *data: bytes) -> bytes:
    return nl.nest(LIST_ELEM, nl.string(EXPR_NAME, name), nl.nest(EXPR_DATA, *data))


def meta(key: int) -> bytes:
    return expr("meta", nl.be32(META_KEY, key), nl.be32(META_DREG, REG_1))


def _payload(base: int, offset: int, length: int) -> bytes:
    return expr("payload", nl.be32(PAYLOAD_DREG, REG_1), nl.be32(PAYLOAD_BASE, base),
                 nl.be32(PAYLOAD_OFFSET, offset), nl.be32(PAYLOAD_LEN, length))


def cmp(op: int, value: bytes) -> bytes:
    return expr("cmp", nl.be32(CMP_SREG, REG_1), nl.be32(CMP_OP, op), nl.nest(CMP_DATA, nl.attr(DATA_VALUE, value)))


def _bitwise(mask: bytes) -> bytes:
    return expr("bitwise", nl.be32(BITWISE_SREG, REG_1), nl.be32(BITWISE_DREG, REG_1),
                 nl.be32(BITWISE_LEN, len(mask)), nl.nest(BITWISE_MASK, nl.attr(DATA_VALUE, mask)),
                 nl.nest(BITWISE_XOR, nl.attr(DATA_VALUE, bytes(len(mask)))))


def verdict(code: int, chain: str = "") -> bytes:
    attributes = [nl.be32(VERDICT_CODE, code)] + ([nl.string(VERDICT_CHAIN, chain)] if chain else [])
    return expr("immediate", nl.be32(IMMEDIATE_DREG, REG_VERDICT),
                nl.nest(IMMEDIATE_DATA, nl.nest(DATA_VERDICT, *attributes)))


def _cidr(cidr: str, family: int) -> tuple[bytes, int]:
    """"::1/128" -> (address bytes with the host bits cleared, prefix length)."""
    address, _, prefix = cidr.partition("/")
    packed = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, address)
    bits = len(packed) * 8
    length = int(prefix) if prefix else bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
    return (int.from_bytes(packed, "big") & mask).to_bytes(len(packed), "big"), length


def _address(family: int, offset: int, cidr: str) -> list[bytes]:
    packed, prefix = _cidr(cidr, family)
    length = ADDRESS[family][2]
    exprs = [_payload(NETWORK_HEADER, offset, length)]
    if prefix < length * 8:
        exprs.append(_bitwise((((1 << prefix) - 1) << (length * 8 - prefix)).to_bytes(length, "big")))
    exprs.append(cmp(CMP_EQ, packed))
    return exprs


def _protocol(rule: Rule) -> str | None:
    protocol = rule.protocol
    if protocol is not None and protocol not in PROTOCOLS:
        raise CniError(NETFILTER_FAILURE, f"nftables backend: protocol {rule.protocol!r} is not supported")
    return protocol


def _ct_match(states: str) -> tuple[int, int]:
    """--ctstate's value as (ct key, bits): states and NAT pseudo-states cannot mix in one nft match."""
    names = states.upper().split(",")
    if all(name in CT_STATES for name in names):
        return CT_STATE, sum(CT_STATES[name] for name in names)
    if all(name in CT_STATUSES for name in names):
        return CT_STATUS, sum(CT_STATUSES[name] for name in names)
    raise CniError(NETFILTER_FAILURE, f"nftables backend: conntrack state {states!r} is not supported")


def expressions(rule: Rule, family: int) -> list[bytes]:
    """The rule as nf_tables expressions, in the order `nft` prints them (render)."""
    src_offset, dst_offset, _ = ADDRESS[family]
    exprs: list[bytes] = []
    if rule.src:
        exprs += _address(family, src_offset, rule.src)
    if rule.dst:
        exprs += _address(family, dst_offset, rule.dst)
    for key, name in ((META_IIFNAME, rule.in_iface), (META_OIFNAME, rule.out_iface)):
        if name:
            exprs += [meta(key), cmp(CMP_EQ, name.encode().ljust(IFNAMSIZ, b"\0"))]
    protocol = _protocol(rule)
    if protocol:
        exprs += [meta(META_L4PROTO), cmp(CMP_EQ, bytes([PROTOCOLS[protocol]]))]
    if rule.dport:
        if protocol not in PORT_PROTOCOLS:
            raise CniError(NETFILTER_FAILURE, f"nftables backend: a port needs tcp, udp or sctp: {rule.render()}")
        low, _, high = rule.dport.partition(":")
        exprs.append(_payload(TRANSPORT_HEADER, DPORT_OFFSET, 2))
        if high:
            exprs += [cmp(CMP_GTE, struct.pack(">H", int(low))), cmp(CMP_LTE, struct.pack(">H", int(high)))]
        else:
            exprs.append(cmp(CMP_EQ, struct.pack(">H", int(low))))
    if rule.uid_owner is not None:
        exprs += [meta(META_SKUID), cmp(CMP_EQ, struct.pack("=I", rule.uid_owner))]
    if rule.ctstate:
        key, bits = _ct_match(rule.ctstate)
        exprs += [expr("ct", nl.be32(CT_KEY, key), nl.be32(CT_DREG, REG_1)),
                  _bitwise(struct.pack("=I", bits)), cmp(CMP_NEQ, bytes(4))]
    if rule.target == "REDIRECT":
        if rule.to_port is None:
            raise CniError(NETFILTER_FAILURE, f"nftables backend: REDIRECT without a port: {rule.render()}")
        exprs += [expr("immediate", nl.be32(IMMEDIATE_DREG, REG_1),
                        nl.nest(IMMEDIATE_DATA, nl.attr(DATA_VALUE, struct.pack(">H", rule.to_port)))),
                  expr("redir", nl.be32(REDIR_REG_PROTO_MIN, REG_1),
                        nl.be32(REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED))]
    elif rule.target in VERDICTS:
        exprs.append(verdict(VERDICTS[rule.target]))
    elif is_ours(rule.target):
        exprs.append(verdict(JUMP, rule.target))
    else:
        raise CniError(NETFILTER_FAILURE, f"nftables backend: target {rule.target!r} is not supported")
    return exprs


def _table() -> bytes:
    return nl.string(TABLE_NAME, TABLE)


def chain_body(name: str) -> bytes:
    body = nl.string(CHAIN_TABLE, TABLE) + nl.string(CHAIN_NAME, name)
    if name in BASE_CHAINS:
        table, builtin = BASE_CHAINS[name]
        hook, _, priority = HOOKS[table, builtin]
        body += nl.nest(CHAIN_HOOK, nl.be32(HOOK_NUM, hook), nl.be32(HOOK_PRIORITY, priority))
        body += nl.be32(CHAIN_POLICY, NF_ACCEPT) + nl.string(CHAIN_TYPE, table)
    return body


def _in_table(rule: Rule, table: str) -> Rule:
    """A rule as it lives in our nft table: a jump sits in our base chain for its built-in chain."""
    if rule.chain not in BUILTIN_CHAINS[table]:
        return rule
    moved: Rule = rule._replace(chain=base_chain(table, rule.chain))  # type: ignore[attr-defined]  # a namedtuple
    return moved


def _rule_body(rule: Rule, family: int, table: str) -> bytes:
    return (nl.string(RULE_TABLE, TABLE) + nl.string(RULE_CHAIN, _in_table(rule, table).chain)
            + nl.nest(RULE_EXPRESSIONS, *expressions(rule, family)))


def layout(rulesets: list[RuleSet]) -> list[tuple[str, list[tuple[str, Rule]]]]:
    """One family's nft table: its chains in creation order (base chains in built-in order, then
    ours), each with its (model table, rule) list - what `nft list table` shows, in that order."""
    chains: dict[str, list[tuple[str, Rule]]] = {}
    for ruleset in rulesets:
        for builtin in BUILTIN_CHAINS[ruleset.table]:
            jumps = [(ruleset.table, jump) for jump in ruleset.jumps if jump.chain == builtin]
            if jumps:
                chains[base_chain(ruleset.table, builtin)] = jumps
    for ruleset in rulesets:
        for name in ruleset.chains:
            chains.setdefault(name, [])
        for rule in ruleset.rules:
            chains[rule.chain].append((ruleset.table, rule))
    return list(chains.items())


def batch(rulesets: list[RuleSet], present: set[int]) -> list[nl.Command]:
    """The one transaction that replaces our tables (in the families `present`) with these rule sets.

    Tables are deleted only where they exist and created exclusively, so a table that appeared since
    we looked aborts the whole transaction instead of merging into it. Deleting nothing also keeps the
    socket's close quick: nf_tables waits for an RCU grace period there once it has objects to free."""
    commands: list[nl.Command] = []
    wanted = by_family(rulesets)
    for family, nfproto in FAMILIES.items():
        if family in present:
            commands.append((nl.DELTABLE, nfproto, 0, _table(), f"delete IPv{family} table {TABLE}"))
        if family not in wanted:
            continue
        commands.append((nl.NEWTABLE, nfproto, nl.NLM_F_CREATE | nl.NLM_F_EXCL, _table(),
                         f"add IPv{family} table {TABLE}"))
        chains = layout(wanted[family])
        for name, _ in chains:
            commands.append((nl.NEWCHAIN, nfproto, nl.NLM_F_CREATE, chain_body(name), f"add IPv{family} chain {name}"))
        for _, rules in chains:
            for table, rule in rules:
                commands.append((nl.NEWRULE, nfproto, nl.NLM_F_CREATE | nl.NLM_F_APPEND,
                                 _rule_body(rule, family, table), functools.partial(_rule_error, rule, family, table)))
    return commands


# -- rendering (nft's own syntax, for logs, CHECK and the golden files) ------------------------------
def text_address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _prefix(cidr: str, family: int) -> str:
    packed, prefix = _cidr(cidr, family)
    address = text_address(packed)
    return address if prefix == len(packed) * 8 else f"{address}/{prefix}"


def render(rule: Rule, family: int) -> str:
    """The rule's statement as `nft list` prints it."""
    ip = FAMILY_NAMES[FAMILIES[family]]
    parts = []
    if rule.src:
        parts.append(f"{ip} saddr {_prefix(rule.src, family)}")
    if rule.dst:
        parts.append(f"{ip} daddr {_prefix(rule.dst, family)}")
    if rule.in_iface:
        parts.append(f'iifname "{rule.in_iface}"')
    if rule.out_iface:
        parts.append(f'oifname "{rule.out_iface}"')
    protocol = rule.protocol
    if rule.dport:
        parts.append(f"{protocol} dport " + rule.dport.replace(":", "-"))
    elif protocol:
        parts.append(f"meta l4proto {protocol}")
    if rule.uid_owner is not None:
        parts.append(f"meta skuid {rule.uid_owner}")
    if rule.ctstate:
        names = rule.ctstate.upper().split(",")
        table = CT_STATUSES if all(name in CT_STATUSES for name in names) else CT_STATES
        ordered = sorted(names, key=lambda name: table.get(name, 0))  # nft prints bits in ascending order
        parts.append(f"ct {'status' if table is CT_STATUSES else 'state'} " + ",".join(n.lower() for n in ordered))
    if rule.target == "REDIRECT":
        parts.append(f"redirect to :{rule.to_port}")
    elif rule.target in VERDICTS:
        parts.append(rule.target.lower())
    else:
        parts.append(f"jump {rule.target}")
    return " ".join(parts)


def describe(rule: Rule, family: int, table: str) -> str:
    """A rule with its place in our nft table: "ip6 microgateway MGW_OUTPUT: tcp dport 19003 ..."."""
    return f"{FAMILY_NAMES[FAMILIES[family]]} {TABLE} {_in_table(rule, table).chain}: {render(rule, family)}"


def _rule_error(rule: Rule, family: int, table: str) -> str:
    """What a failed NEWRULE names (rendered only then)."""
    return f"rule {describe(rule, family, table)}"


def _base_header(name: str) -> str:
    table, builtin = BASE_CHAINS[name]
    _, hook, priority = HOOKS[table, builtin]
    shown = PRIORITY_NAMES.get((table, hook, priority), str(priority))
    return f"type {table} hook {hook} priority {shown}; policy accept;"


def render_table(rulesets: list[RuleSet]) -> str:
    """One family's table as `nft list table ip|ip6 microgateway` prints it: the nft golden files."""
    family = rulesets[0].family
    blocks = []
    for name, rules in layout(rulesets):
        lines = ([_base_header(name)] if name in BASE_CHAINS else []) + [render(rule, family) for _, rule in rules]
        blocks.append(f"\tchain {name} {{\n" + "".join(f"\t\t{line}\n" for line in lines) + "\t}")
    return f"table {FAMILY_NAMES[FAMILIES[family]]} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"


# -- reading -------------------------------------------------------------------------------------------
class Unexpected(Exception):
    """An expression sequence no rule of the model produces."""


def _data_value(payload: bytes) -> bytes:
    return dict(nl.attributes(payload)).get(DATA_VALUE, b"")


def _decode_expressions(payload: bytes) -> list[tuple[str, dict[int, bytes]]]:
    decoded = []
    for _, element in nl.attributes(payload):
        fields = dict(nl.attributes(element))
        decoded.append((nl.text(fields.get(EXPR_NAME, b"")), dict(nl.attributes(fields.get(EXPR_DATA, b"")))))
    return decoded


def _u32(data: dict[int, bytes], key: int) -> int | None:
    value = data.get(key)
    return None if value is None else nl.int32(value)


def _network(value: bytes, mask: bytes | None) -> str:
    """The model's spelling of a matched address: "127.0.0.6/32"."""
    prefix = len(value) * 8 if mask is None else bin(int.from_bytes(mask, "big")).count("1")
    return f"{text_address(value)}/{prefix}"


def _compare(fields: dict[str, Any], loaded: tuple[Any, ...], mask: bytes | None, op: int | None, value: bytes,
             family: int) -> None:
    """Fold one cmp into the rule's fields; Unexpected for a comparison the model has no field for."""
    src_offset, dst_offset, length = ADDRESS[family]
    if loaded == ("meta", META_L4PROTO) and op == CMP_EQ and len(value) == 1 and value[0] in PROTOCOL_NAMES:
        fields["protocol"] = PROTOCOL_NAMES[value[0]]
    elif loaded == ("meta", META_IIFNAME) and op == CMP_EQ and "in_iface" not in fields:
        fields["in_iface"] = nl.text(value)
    elif loaded == ("meta", META_OIFNAME) and op == CMP_EQ and "out_iface" not in fields:
        fields["out_iface"] = nl.text(value)
    elif loaded == ("meta", META_SKUID) and op == CMP_EQ and len(value) == 4:
        fields["uid_owner"] = struct.unpack("=I", value)[0]
    elif (loaded in (("ct", CT_STATE), ("ct", CT_STATUS)) and op == CMP_NEQ and value == bytes(4)
          and mask is not None and len(mask) == 4 and "ctstate" not in fields):
        table = CT_STATES if loaded[1] == CT_STATE else CT_STATUSES
        bits = struct.unpack("=I", mask)[0]
        names = [name for name, bit in table.items() if bits & bit]
        if sum(table[name] for name in names) != bits:
            raise Unexpected(f"ct bits {bits:#x}")
        fields["ctstate"] = ",".join(names)
    elif loaded == ("payload", NETWORK_HEADER, src_offset, length) and op == CMP_EQ:
        fields["src"] = _network(value, mask)
    elif loaded == ("payload", NETWORK_HEADER, dst_offset, length) and op == CMP_EQ:
        fields["dst"] = _network(value, mask)
    elif (loaded == ("payload", TRANSPORT_HEADER, DPORT_OFFSET, 2) and fields.get("protocol") in PORT_PROTOCOLS
          and len(value) == 2 and mask is None):
        port = struct.unpack(">H", value)[0]
        if op == CMP_EQ and "dport" not in fields:
            fields["dport"] = str(port)
        elif op == CMP_GTE and "dport" not in fields:
            fields["dport"] = f"{port}:"
        elif op == CMP_LTE and str(fields.get("dport", "")).endswith(":"):
            fields["dport"] += str(port)
        else:
            raise Unexpected(f"port comparison {op}")
    else:
        raise Unexpected(f"comparison {op} of {loaded}")


def _verdict_target(data: dict[int, bytes]) -> str:
    attributes = dict(nl.attributes(dict(nl.attributes(data.get(IMMEDIATE_DATA, b""))).get(DATA_VERDICT, b"")))
    code = _u32(attributes, VERDICT_CODE)
    if code == JUMP:
        return nl.text(attributes.get(VERDICT_CHAIN, b""))
    if code in VERDICT_NAMES:
        return VERDICT_NAMES[code]
    raise Unexpected(f"verdict {code}")


def decode(chain: str, family: int, payload: bytes) -> Rule:
    """A live rule back into the model; Unexpected when it holds anything the model cannot express."""
    fields: dict[str, Any] = {"chain": chain, "protocol": None}
    loaded: tuple[Any, ...] = ()
    mask: bytes | None = None
    for name, data in _decode_expressions(payload):
        if "target" in fields:
            raise Unexpected(f"{name} after the verdict")
        if name == "meta" and _u32(data, META_DREG) == REG_1:
            loaded, mask = ("meta", _u32(data, META_KEY)), None
        elif name == "ct" and _u32(data, CT_DREG) == REG_1:
            loaded, mask = ("ct", _u32(data, CT_KEY)), None
        elif name == "payload" and _u32(data, PAYLOAD_DREG) == REG_1:
            loaded, mask = ("payload", _u32(data, PAYLOAD_BASE), _u32(data, PAYLOAD_OFFSET),
                            _u32(data, PAYLOAD_LEN)), None
        elif (name == "bitwise" and loaded and mask is None and BITWISE_MASK in data
              and _data_value(data.get(BITWISE_XOR, b"")) == bytes(len(_data_value(data[BITWISE_MASK])))):
            mask = _data_value(data[BITWISE_MASK])
        elif name == "cmp" and _u32(data, CMP_SREG) == REG_1 and loaded:
            _compare(fields, loaded, mask, _u32(data, CMP_OP), _data_value(data.get(CMP_DATA, b"")), family)
        elif name == "immediate" and _u32(data, IMMEDIATE_DREG) == REG_1:
            loaded, mask = ("value", _data_value(data.get(IMMEDIATE_DATA, b""))), None
        elif (name == "redir" and loaded[:1] == ("value",) and len(loaded[1]) == 2
              and _u32(data, REDIR_REG_PROTO_MIN) == REG_1
              and _u32(data, REDIR_REG_PROTO_MAX) in (None, REG_1)  # the kernel reports max = min
              and set(data) <= {REDIR_REG_PROTO_MIN, REDIR_REG_PROTO_MAX, REDIR_FLAGS}):
            fields["target"], fields["to_port"] = "REDIRECT", struct.unpack(">H", loaded[1])[0]
        elif name == "immediate" and _u32(data, IMMEDIATE_DREG) == REG_VERDICT:
            fields["target"] = _verdict_target(data)
        else:
            raise Unexpected(f"expression {name}")
    if "target" not in fields:
        raise Unexpected("no verdict")
    if str(fields.get("dport", "")).endswith(":"):
        raise Unexpected("open port range")
    return Rule(**fields)


def _where(family: int, chain: str) -> str:
    return f"{FAMILY_NAMES[FAMILIES[family]]} {TABLE} {chain}"


def _base_syntax(base: tuple[Any, ...] | None) -> str:
    if base is None:
        return "a regular chain"
    kind, hook, priority, policy = base
    policy_name = str(VERDICT_NAMES.get(policy, policy)).lower()
    return f"type {kind} hook {HOOK_NAMES.get(hook, hook)} priority {priority}; policy {policy_name};"


def _expected_base(name: str) -> tuple[str, int, int, int]:
    table, builtin = BASE_CHAINS[name]
    hook, _, priority = HOOKS[table, builtin]
    return table, hook, priority, NF_ACCEPT


def _present(sock: nl.Netlink) -> set[int]:
    """The families (4, 6) that have our table."""
    by_proto = {nfproto: family for family, nfproto in FAMILIES.items()}
    return {by_proto[obj.family] for obj in sock.dump(nl.GETTABLE)
            if obj.family in by_proto and nl.text(obj.attrs.get(TABLE_NAME, b"")) == TABLE}


class _NothingWithoutNfTables:
    """Reading or removing in a kernel without nf_tables (or that may not load it) finds nothing of ours
    instead of failing: DEL on a legacy-only node, diagnose anywhere. Applying never tolerates it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> bool:
        return isinstance(exc, nl.NetlinkError) and exc.errno in nl.UNSUPPORTED


def _snapshot() -> dict[int, tuple[dict[str, Any], list[tuple[str, bytes]]]]:
    """Per family that has our table: {chain: (type, hook, priority, policy) or None for a regular
    chain} and [(chain, expressions)] in the table's order."""
    present: set[int] = set()
    with _NothingWithoutNfTables(), nl.Netlink() as sock:
        present = _present(sock)
        if present:
            chains = sock.dump(nl.GETCHAIN)
            # Unfiltered: a rule dump filtered by table name stops after the first family's table.
            rules = sock.dump(nl.GETRULE)
    if not present:
        return {}
    by_proto = {FAMILIES[family]: family for family in present}
    state: dict[int, tuple[dict[str, Any], list[tuple[str, bytes]]]] = {family: ({}, []) for family in present}
    for chain in chains:
        family = by_proto.get(chain.family)
        if family is None or nl.text(chain.attrs.get(CHAIN_TABLE, b"")) != TABLE:
            continue
        base = None
        if CHAIN_HOOK in chain.attrs:
            hook = dict(nl.attributes(chain.attrs[CHAIN_HOOK]))
            base = (nl.text(chain.attrs.get(CHAIN_TYPE, b"")), _u32(hook, HOOK_NUM), _u32(hook, HOOK_PRIORITY),
                    _u32(chain.attrs, CHAIN_POLICY))
        state[family][0][nl.text(chain.attrs.get(CHAIN_NAME, b""))] = base
    for rule in rules:
        family = by_proto.get(rule.family)
        if family is not None and nl.text(rule.attrs.get(RULE_TABLE, b"")) == TABLE:
            state[family][1].append((nl.text(rule.attrs.get(RULE_CHAIN, b"")), rule.attrs.get(RULE_EXPRESSIONS, b"")))
    return state


def _reachable(table: str, chains: dict[str, Any], rules: list[tuple[str, Rule | Foreign]]) -> set[str]:
    """The regular chains that a model table's base chains reach through jumps."""
    targets: dict[str, set[str]] = {}
    for chain, entry in rules:
        if isinstance(entry, Rule) and is_ours(entry.target):
            targets.setdefault(chain, set()).add(entry.target)
    seen: set[str] = set()
    todo = [name for name in chains if BASE_CHAINS.get(name, ("",))[0] == table]
    while todo:
        for target in targets.get(todo.pop(), set()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _live(family: int, table: str, chains: dict[str, Any], rules: list[tuple[str, Rule | Foreign]]) -> Live:
    """A model table's part of our nft table. A regular chain belongs to the model table whose base
    chains reach it; one that none reaches (its jump removed) shows in every table read, so CHECK
    still sees it."""
    reached = {name: _reachable(name, chains, rules) for name in TABLES}
    mine = {name for name in chains if name not in BASE_CHAINS
            and (name in reached[table] or not any(name in found for found in reached.values()))}
    live_chains: list[str] = []
    jumps: list[Rule] = []
    live_rules: list[Rule] = []
    foreign: list[Foreign] = []
    for name, base in chains.items():
        if name in BASE_CHAINS and BASE_CHAINS[name][0] == table and base != _expected_base(name):
            foreign.append(Foreign(chain=name, text=f"{_where(family, name)}: {_base_syntax(base)}",
                                   reason=f"expected {_base_syntax(_expected_base(name))}"))
        elif name in mine and (base is not None or not is_ours(name)):
            foreign.append(Foreign(chain=name, text=f"{_where(family, name)}: {_base_syntax(base)}",
                                   reason="not a chain of ours"))
        elif name in mine:
            live_chains.append(name)
    for chain, entry in rules:
        in_base = BASE_CHAINS.get(chain, ("",))[0] == table
        if isinstance(entry, Foreign):
            if in_base or chain in live_chains:
                foreign.append(entry)
        elif in_base:
            jumps.append(entry._replace(chain=BASE_CHAINS[chain][1]))  # type: ignore[attr-defined]  # a namedtuple
        elif chain in live_chains:
            live_rules.append(entry)
    return Live(family=family, table=table, chains=tuple(sorted(live_chains)), rules=tuple(live_rules),
                jumps=tuple(jumps), foreign=tuple(foreign))


class NftablesBackend(Backend):
    """Native nftables over netlink (nfnetlink.py): no nft binary, no libnftables, no heavy import."""

    name = NFTABLES
    needs_worker = False  # nothing to prepare: its imports are light (nfnetlink.py)

    def apply(self, rulesets: list[RuleSet]) -> None:
        with nl.Netlink() as sock:
            def attempt() -> None:
                try:
                    sock.transact(batch(rulesets, _present(sock)))
                except nl.StaleBatch as exc:  # our table came or went since we looked
                    raise Conflict(exc.msg) from None

            retrying(attempt, "apply")

    def read(self, families: list[int], tables: tuple[str, ...] = TABLES) -> list[Live]:
        state = _snapshot()
        lives: list[Live] = []
        for family in families:
            chains, raw = state.get(family, ({}, []))
            rules: list[tuple[str, Rule | Foreign]] = []
            for chain, payload in raw:
                try:
                    rules.append((chain, decode(chain, family, payload)))
                except Unexpected as exc:
                    names = " ".join(name for name, _ in _decode_expressions(payload))
                    rules.append((chain, Foreign(chain=chain, text=f"{_where(family, chain)}: [{names}]",
                                                 reason=str(exc))))
            lives.extend(_live(family, table, chains, rules) for table in tables)
        return lives

    def remove(self) -> bool:
        present: set[int] = set()
        with _NothingWithoutNfTables(), nl.Netlink() as sock:
            present = _present(sock)
            if present:
                sock.transact(batch([], present))
        return bool(present)

    def syntax(self, rule: Rule, family: int, table: str) -> str:
        return describe(rule, family, table)
