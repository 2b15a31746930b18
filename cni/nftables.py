"""The native nftables backend: our rule sets as tables `ip microgateway` and `ip6 microgateway`.

Layout (docs/design.md, "nftables backend"): per family one table holding base chains named after
the built-in chains the rule set jumps from (PREROUTING and OUTPUT: type nat, priority dstnat -100,
policy accept) and the MGW_ chains; each rule is the rule set's rule, expression for expression.
Everything of ours is the table: removing ours is deleting it, and nothing outside it is touched.

Writes are one netlink batch for every family (cni/nfnetlink.py): per family "add table, delete
table, add table, chains, rules", so the old state goes and the new comes in one transaction (I6);
families without a rule set lose their table in the same batch.
"""

from __future__ import annotations

import socket
import struct

from cni import nfnetlink as nl
from cni.rules import CHAIN_PREFIX, OWN_CHAINS, Rule, RuleSet

TYPE_CHECKING = False  # typing costs ~8 ms of a frozen start (cni/records.py): annotations only
if TYPE_CHECKING:
    from typing import Any

TABLE = "microgateway"
FAMILIES = {4: nl.NFPROTO_IPV4, 6: nl.NFPROTO_IPV6}
FAMILY_NAMES = {nl.NFPROTO_IPV4: "ip", nl.NFPROTO_IPV6: "ip6"}
NAT_PRIORITY = -100  # NF_IP_PRI_NAT_DST, nft's "dstnat": where iptables' nat table and Istio's nft chains hook
# built-in chain -> (chain type, netfilter hook number, hook name, priority)
BASE_CHAINS = {"PREROUTING": ("nat", 0, "prerouting", NAT_PRIORITY), "OUTPUT": ("nat", 3, "output", NAT_PRIORITY)}

# nf_tables.h attribute numbers
TABLE_NAME = 1
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE = 1, 3, 4, 5, 7
HOOK_NUM, HOOK_PRIORITY = 1, 2
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS = 1, 2, 4
LIST_ELEM, EXPR_NAME, EXPR_DATA = 1, 1, 2
DATA_VALUE, DATA_VERDICT, VERDICT_CODE, VERDICT_CHAIN = 1, 2, 1, 2
META_DREG, META_KEY = 1, 2
PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN = 1, 2, 3, 4
CMP_SREG, CMP_OP, CMP_DATA = 1, 2, 3
BITWISE_SREG, BITWISE_DREG, BITWISE_LEN, BITWISE_MASK, BITWISE_XOR = 1, 2, 3, 4, 5
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
REDIR_REG_PROTO_MIN, REDIR_FLAGS = 1, 3
NF_ACCEPT = 1
NF_NAT_RANGE_PROTO_SPECIFIED = 2
REG_VERDICT, REG_1 = 0, 1
META_OIFNAME, META_SKUID, META_L4PROTO = 7, 10, 16
NETWORK_HEADER, TRANSPORT_HEADER = 1, 2
CMP_EQ, CMP_NEQ, CMP_LT, CMP_LTE, CMP_GT, CMP_GTE = range(6)
IPPROTO_TCP = 6
IFNAMSIZ = 16
COMMIT_ATTEMPTS = 3
VERDICTS = {"RETURN": -5, "ACCEPT": NF_ACCEPT, "DROP": 0}
JUMP = -3
VERDICT_NAMES = {code: name for name, code in VERDICTS.items()} | {JUMP: "jump", -4: "goto", -1: "continue"}
ADDRESS = {4: (12, 16, 4), 6: (8, 24, 16)}  # family -> (saddr offset, daddr offset, length)
DPORT_OFFSET = 2


# -- building ----------------------------------------------------------------------------------------
def _expr(name: str, *data: bytes) -> bytes:
    return nl.nest(LIST_ELEM, nl.string(EXPR_NAME, name), nl.nest(EXPR_DATA, *data))


def _meta(key: int) -> bytes:
    return _expr("meta", nl.be32(META_KEY, key), nl.be32(META_DREG, REG_1))


def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", nl.be32(PAYLOAD_DREG, REG_1), nl.be32(PAYLOAD_BASE, base),
                 nl.be32(PAYLOAD_OFFSET, offset), nl.be32(PAYLOAD_LEN, length))


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", nl.be32(CMP_SREG, REG_1), nl.be32(CMP_OP, op), nl.nest(CMP_DATA, nl.attr(DATA_VALUE, value)))


def _verdict(code: int, chain: str = "") -> bytes:
    verdict = [nl.be32(VERDICT_CODE, code)] + ([nl.string(VERDICT_CHAIN, chain)] if chain else [])
    return _expr("immediate", nl.be32(IMMEDIATE_DREG, REG_VERDICT),
                 nl.nest(IMMEDIATE_DATA, nl.nest(DATA_VERDICT, *verdict)))


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
        mask = (((1 << prefix) - 1) << (length * 8 - prefix)).to_bytes(length, "big")
        exprs.append(_expr("bitwise", nl.be32(BITWISE_SREG, REG_1), nl.be32(BITWISE_DREG, REG_1),
                           nl.be32(BITWISE_LEN, length), nl.nest(BITWISE_MASK, nl.attr(DATA_VALUE, mask)),
                           nl.nest(BITWISE_XOR, nl.attr(DATA_VALUE, bytes(length)))))
    exprs.append(_cmp(CMP_EQ, packed))
    return exprs


def expressions(rule: Rule, family: int) -> list[bytes]:
    """The rule as nf_tables expressions, in the order `nft` prints them."""
    src_offset, dst_offset, _ = ADDRESS[family]
    exprs: list[bytes] = []
    if rule.src:
        exprs += _address(family, src_offset, rule.src)
    if rule.dst:
        exprs += _address(family, dst_offset, rule.dst)
    if rule.out_iface:
        exprs += [_meta(META_OIFNAME), _cmp(CMP_EQ, rule.out_iface.encode().ljust(IFNAMSIZ, b"\0"))]
    exprs += [_meta(META_L4PROTO), _cmp(CMP_EQ, bytes([IPPROTO_TCP]))]
    if rule.dport:
        low, _, high = rule.dport.partition(":")
        exprs.append(_payload(TRANSPORT_HEADER, DPORT_OFFSET, 2))
        if high:
            exprs += [_cmp(CMP_GTE, struct.pack(">H", int(low))), _cmp(CMP_LTE, struct.pack(">H", int(high)))]
        else:
            exprs.append(_cmp(CMP_EQ, struct.pack(">H", int(low))))
    if rule.uid_owner is not None:
        exprs += [_meta(META_SKUID), _cmp(CMP_EQ, struct.pack("=I", rule.uid_owner))]
    if rule.target == "REDIRECT":
        assert rule.to_port is not None
        exprs += [_expr("immediate", nl.be32(IMMEDIATE_DREG, REG_1),
                        nl.nest(IMMEDIATE_DATA, nl.attr(DATA_VALUE, struct.pack(">H", rule.to_port)))),
                  _expr("redir", nl.be32(REDIR_REG_PROTO_MIN, REG_1), nl.be32(REDIR_FLAGS,
                                                                                 NF_NAT_RANGE_PROTO_SPECIFIED))]
    elif rule.target in VERDICTS:
        exprs.append(_verdict(VERDICTS[rule.target]))
    else:
        exprs.append(_verdict(JUMP, rule.target))
    return exprs


def _table() -> bytes:
    return nl.string(TABLE_NAME, TABLE)


def _chain_body(name: str) -> bytes:
    body = nl.string(CHAIN_TABLE, TABLE) + nl.string(CHAIN_NAME, name)
    if name in BASE_CHAINS:
        kind, hook, _, priority = BASE_CHAINS[name]
        body += nl.nest(CHAIN_HOOK, nl.be32(HOOK_NUM, hook), nl.be32(HOOK_PRIORITY, priority))
        body += nl.be32(CHAIN_POLICY, NF_ACCEPT) + nl.string(CHAIN_TYPE, kind)
    return body


def _rule_body(rule: Rule, family: int) -> bytes:
    return (nl.string(RULE_TABLE, TABLE) + nl.string(RULE_CHAIN, rule.chain)
            + nl.nest(RULE_EXPRESSIONS, *expressions(rule, family)))


def chain_order(ruleset: RuleSet) -> list[str]:
    """Base chains (in the order of the jumps), then our own chains: the order `nft list` shows."""
    bases = list(dict.fromkeys(jump.chain for jump in ruleset.jumps))
    return bases + [name for name in OWN_CHAINS if name not in bases]


def batch(rulesets: list[RuleSet], present: set[int]) -> list[nl.Command]:
    """The one transaction that replaces our tables (in the families `present`) with these rule sets.

    Tables are deleted only where they exist and created exclusively, so a table that appeared since
    we looked aborts the whole transaction instead of merging into it. Deleting nothing also keeps the
    socket's close quick: nf_tables waits for an RCU grace period there once it has objects to free."""
    commands: list[nl.Command] = []
    wanted = {ruleset.family: ruleset for ruleset in rulesets}
    for family, nfproto in FAMILIES.items():
        if family in present:
            commands.append((nl.DELTABLE, nfproto, 0, _table(), f"delete IPv{family} table {TABLE}"))
        ruleset = wanted.get(family)
        if ruleset is None:
            continue
        commands.append((nl.NEWTABLE, nfproto, nl.NLM_F_CREATE | nl.NLM_F_EXCL, _table(),
                         f"add IPv{family} table {TABLE}"))
        for name in chain_order(ruleset):
            commands.append((nl.NEWCHAIN, nfproto, nl.NLM_F_CREATE, _chain_body(name), f"add IPv{family} chain {name}"))
        for rule in (*ruleset.rules, *ruleset.jumps):
            commands.append((nl.NEWRULE, nfproto, nl.NLM_F_CREATE | nl.NLM_F_APPEND, _rule_body(rule, family),
                             lambda rule=rule, family=family: f"rule {describe(rule, family)}"))
    return commands


# -- rendering (nft's own syntax, for logs, CHECK and the golden files) ------------------------------
def _text_address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _prefix(cidr: str, family: int) -> str:
    packed, prefix = _cidr(cidr, family)
    address = _text_address(packed)
    return address if prefix == len(packed) * 8 else f"{address}/{prefix}"


def render(rule: Rule, family: int) -> str:
    """The rule's body as `nft list` prints it."""
    ip = FAMILY_NAMES[FAMILIES[family]]
    parts = []
    if rule.src:
        parts.append(f"{ip} saddr {_prefix(rule.src, family)}")
    if rule.dst:
        parts.append(f"{ip} daddr {_prefix(rule.dst, family)}")
    if rule.out_iface:
        parts.append(f'oifname "{rule.out_iface}"')
    if rule.dport:
        parts.append("tcp dport " + rule.dport.replace(":", "-"))
    else:
        parts.append("meta l4proto tcp")
    if rule.uid_owner is not None:
        parts.append(f"meta skuid {rule.uid_owner}")
    if rule.target == "REDIRECT":
        parts.append(f"redirect to :{rule.to_port}")
    elif rule.target in VERDICTS:
        parts.append(rule.target.lower())
    else:
        parts.append(f"jump {rule.target}")
    return " ".join(parts)


def describe(rule: Rule, family: int) -> str:
    """A rule with its place, in nft syntax: "ip6 microgateway MGW_OUTPUT: tcp dport 19003 ..."."""
    return f"{FAMILY_NAMES[FAMILIES[family]]} {TABLE} {rule.chain}: {render(rule, family)}"


def render_table(ruleset: RuleSet) -> str:
    """The whole table as `nft list table ip|ip6 microgateway` prints it (handles off)."""
    by_chain: dict[str, list[str]] = {name: [] for name in chain_order(ruleset)}
    for rule in (*ruleset.rules, *ruleset.jumps):
        by_chain[rule.chain].append(render(rule, ruleset.family))
    blocks = []
    for name, lines in by_chain.items():
        body = []
        if name in BASE_CHAINS:
            kind, _, hook, priority = BASE_CHAINS[name]
            shown = "dstnat" if (hook, priority) == ("prerouting", NAT_PRIORITY) else str(priority)
            body.append(f"\t\ttype {kind} hook {hook} priority {shown}; policy accept;")
        body += [f"\t\t{line}" for line in lines]
        blocks.append(f"\tchain {name} {{\n" + "".join(f"{line}\n" for line in body) + "\t}")
    ip = FAMILY_NAMES[FAMILIES[ruleset.family]]
    return f"table {ip} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"


# -- reading -------------------------------------------------------------------------------------------
class _Unexpected(Exception):
    """An expression sequence no rule of ours produces."""


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
    return f"{_text_address(value)}/{prefix}"


def decode(chain: str, family: int, payload: bytes) -> Rule:
    """A live rule back into the model; _Unexpected when it holds anything our rules never have."""
    fields: dict[str, Any] = {"chain": chain}
    loaded: tuple[Any, ...] = ()
    mask: bytes | None = None
    low: int | None = None
    tcp = False
    src_offset, dst_offset, length = ADDRESS[family]
    for name, data in _decode_expressions(payload):
        if name == "meta" and _u32(data, META_DREG) == REG_1:
            loaded, mask = ("meta", _u32(data, META_KEY)), None
        elif name == "payload" and _u32(data, PAYLOAD_DREG) == REG_1:
            loaded, mask = ("payload", _u32(data, PAYLOAD_BASE), _u32(data, PAYLOAD_OFFSET),
                            _u32(data, PAYLOAD_LEN)), None
        elif name == "bitwise" and loaded[:1] == ("payload",) and BITWISE_MASK in data:
            mask = _data_value(data[BITWISE_MASK])
        elif name == "cmp" and _u32(data, CMP_SREG) == REG_1:
            op, value = _u32(data, CMP_OP), _data_value(data.get(CMP_DATA, b""))
            if loaded == ("meta", META_L4PROTO) and op == CMP_EQ and value == bytes([IPPROTO_TCP]):
                tcp = True
            elif loaded == ("meta", META_OIFNAME) and op == CMP_EQ and "out_iface" not in fields:
                fields["out_iface"] = nl.text(value)
            elif loaded == ("meta", META_SKUID) and op == CMP_EQ and len(value) == 4:
                fields["uid_owner"] = struct.unpack("=I", value)[0]
            elif loaded == ("payload", NETWORK_HEADER, src_offset, length) and op == CMP_EQ:
                fields["src"] = _network(value, mask)
            elif loaded == ("payload", NETWORK_HEADER, dst_offset, length) and op == CMP_EQ:
                fields["dst"] = _network(value, mask)
            elif loaded == ("payload", TRANSPORT_HEADER, DPORT_OFFSET, 2) and tcp and len(value) == 2:
                port = struct.unpack(">H", value)[0]
                if op == CMP_EQ:
                    fields["dport"] = str(port)
                elif op == CMP_GTE and low is None:
                    low = port
                elif op == CMP_LTE and low is not None:
                    fields["dport"] = f"{low}:{port}"
                else:
                    raise _Unexpected(f"tcp dport comparison {op}")
            else:
                raise _Unexpected(f"comparison {op} of {loaded}")
        elif name == "immediate" and _u32(data, IMMEDIATE_DREG) == REG_VERDICT:
            verdict = dict(nl.attributes(dict(nl.attributes(data.get(IMMEDIATE_DATA, b""))).get(DATA_VERDICT, b"")))
            code = _u32(verdict, VERDICT_CODE)
            if code == JUMP:
                fields["target"] = nl.text(verdict.get(VERDICT_CHAIN, b""))
            elif code in VERDICT_NAMES and code != -1:
                fields["target"] = VERDICT_NAMES[code].upper()
            else:
                raise _Unexpected(f"verdict {code}")
        elif name == "immediate" and _u32(data, IMMEDIATE_DREG) == REG_1:
            loaded = ("value", _data_value(data.get(IMMEDIATE_DATA, b"")))
        elif name == "redir" and loaded[:1] == ("value",) and len(loaded[1]) == 2:
            fields["target"], fields["to_port"] = "REDIRECT", struct.unpack(">H", loaded[1])[0]
        else:
            raise _Unexpected(f"expression {name}")
        if "target" in fields and name not in ("immediate", "redir"):
            raise _Unexpected("expressions after the verdict")
    if not tcp or "target" not in fields or fields["target"] in ("GOTO", "JUMP"):
        raise _Unexpected("not a TCP rule with one of our verdicts")
    return Rule(**fields)


def _describe(family: int, chain: str, payload: bytes, reason: str) -> str:
    names = " ".join(name for name, _ in _decode_expressions(payload))
    return f"{FAMILY_NAMES[FAMILIES[family]]} {TABLE} {chain}: [{names}] [not one of ours: {reason}]"


HOOK_NAMES = {hook: name for _, hook, name, _ in BASE_CHAINS.values()}


def _base_syntax(base: tuple[Any, ...] | None) -> str:
    if base is None:
        return "a regular chain"
    kind, hook, priority, policy = base
    return (f"type {kind} hook {HOOK_NAMES.get(hook, hook)} priority {priority}; "
            f"policy {VERDICT_NAMES.get(policy, policy)};")


def read_state() -> dict[int, dict[str, Any]]:
    """Our tables as live in the kernel, per family: {"chains": {name: (type, hook, priority, policy) or
    None}, "rules": [(chain, Rule | description)]}. Families without our table are left out."""
    with nl.Netlink() as sock:
        tables = sock.dump(nl.GETTABLE)
        present = {obj.family for obj in tables if nl.text(obj.attrs.get(TABLE_NAME, b"")) == TABLE}
        families = {family for family, nfproto in FAMILIES.items() if nfproto in present}
        if not families:
            return {}
        chains = sock.dump(nl.GETCHAIN)
        # Unfiltered: a dump filtered by table name stops after the first family's table (nf_tables_api.c)
        rules = sock.dump(nl.GETRULE)
    state: dict[int, dict[str, Any]] = {family: {"chains": {}, "rules": []} for family in families}
    by_proto = {FAMILIES[family]: family for family in families}
    for chain in chains:
        family = by_proto.get(chain.family)
        if family is None or nl.text(chain.attrs.get(CHAIN_TABLE, b"")) != TABLE:
            continue
        hook = chain.attrs.get(CHAIN_HOOK)
        base = None
        if hook is not None:
            hook_attrs = dict(nl.attributes(hook))
            base = (nl.text(chain.attrs.get(CHAIN_TYPE, b"")), _u32(hook_attrs, HOOK_NUM),
                    _u32(hook_attrs, HOOK_PRIORITY), _u32(chain.attrs, CHAIN_POLICY))
        state[family]["chains"][nl.text(chain.attrs.get(CHAIN_NAME, b""))] = base
    for rule in rules:
        family = by_proto.get(rule.family)
        if family is None or nl.text(rule.attrs.get(RULE_TABLE, b"")) != TABLE:
            continue
        chain = nl.text(rule.attrs.get(RULE_CHAIN, b""))
        payload = rule.attrs.get(RULE_EXPRESSIONS, b"")
        try:
            entry: Rule | str = decode(chain, family, payload)
        except _Unexpected as exc:
            entry = _describe(family, chain, payload, str(exc))
        state[family]["rules"].append((chain, entry))
    return state


def expected_base(name: str) -> tuple[str, int, int, int]:
    kind, hook, _, priority = BASE_CHAINS[name]
    return kind, hook, priority, NF_ACCEPT


def read(families: list[int]) -> dict[int, tuple[list[Rule | str], list[Rule | str]]]:
    """Like netfilter.read_families: per family our chains' rules and the base chains' jumps.

    A base chain whose type, hook, priority or policy is not ours, and any chain that is not ours,
    shows as a description in nft syntax."""
    state = read_state()
    result: dict[int, tuple[list[Rule | str], list[Rule | str]]] = {}
    for family in families:
        live = state.get(family, {"chains": {}, "rules": []})
        rules: list[Rule | str] = []
        jumps: list[Rule | str] = []
        for name, base in live["chains"].items():
            where = f"{FAMILY_NAMES[FAMILIES[family]]} {TABLE} chain {name}"
            if name in BASE_CHAINS and base != expected_base(name):
                jumps.append(f"{where}: {_base_syntax(base)} [expected {_base_syntax(expected_base(name))}]")
            elif name not in BASE_CHAINS and (base is not None or not name.startswith(CHAIN_PREFIX)):
                rules.append(f"{where}: {_base_syntax(base)} [not one of ours]")
        for chain, entry in live["rules"]:
            (jumps if chain in BASE_CHAINS else rules).append(entry)
        result[family] = (rules, jumps)
    return result


def _present(sock: nl.Netlink) -> set[int]:
    """The families (4, 6) that have our table."""
    by_proto = {nfproto: family for family, nfproto in FAMILIES.items()}
    return {by_proto[obj.family] for obj in sock.dump(nl.GETTABLE)
            if obj.family in by_proto and nl.text(obj.attrs.get(TABLE_NAME, b"")) == TABLE}


def apply(rulesets: list[RuleSet]) -> None:
    """Replace our tables with these rule sets in one transaction, in the current netns (I6)."""
    with nl.Netlink() as sock:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                sock.transact(batch(rulesets, _present(sock)))
                return
            except nl.Conflict:  # our table came or went since we looked: look again
                if attempt == COMMIT_ATTEMPTS:
                    raise


def remove() -> bool:
    """Delete our tables in the current netns in one transaction; True if any existed."""
    with nl.Netlink() as sock:
        present = _present(sock)
        if present:
            sock.transact(batch([], present))
    return bool(present)
