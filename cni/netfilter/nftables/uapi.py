"""The kernel's numbers inside our nf_tables messages, and the model's names for them.

Attributes, expression keys, registers and verdict codes are linux/netfilter/nf_tables.h's; conntrack
bits nf_conntrack_common.h's; offsets those of the IP and transport headers. The message layer's
numbers (NFT_MSG_*, NFPROTO_*) are nfnetlink.py's. Read by the encoder, the decoder, the syntax and
the backend alike; imports nothing.
"""

from __future__ import annotations

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
