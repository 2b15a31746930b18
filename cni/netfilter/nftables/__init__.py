"""The native nftables backend: our rule sets as nf_tables objects over hand-built netlink.

`backend` is the backend (apply, read, remove); `encoder` turns rule sets into netlink messages and
`decoder` live rules back into the model; `syntax` prints them as nft does; `layout` is the shape of our
tables, `uapi` the kernel's numbers, `nfnetlink` the netlink library.
"""
