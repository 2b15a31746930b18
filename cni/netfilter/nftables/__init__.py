"""The native nftables backend: our rule sets as nf_tables objects over hand-built netlink."""
