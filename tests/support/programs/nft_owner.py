"""Holds an nftables table that only this process may change (NFT_TABLE_F_OWNER, Linux >= 5.12), as
another agent's table would be: the kernel refuses everyone else's changes to it while we live."""

from __future__ import annotations

import argparse
import signal

from cni.netfilter.nftables import nfnetlink as nl

TABLE_NAME, TABLE_FLAGS = 1, 2
NFT_TABLE_F_OWNER = 0x2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", type=int, choices=[4, 6], required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    nfproto = nl.NFPROTO_IPV4 if args.family == 4 else nl.NFPROTO_IPV6
    with nl.Netlink() as sock:
        sock.transact([(nl.NEWTABLE, nfproto, nl.NLM_F_CREATE,
                        nl.string(TABLE_NAME, args.table) + nl.be32(TABLE_FLAGS, NFT_TABLE_F_OWNER), "owned table")])
        print("ready", flush=True)
        signal.pause()  # the table lives until the test kills us


if __name__ == "__main__":
    main()
