"""Changing our rules behind the plugin's back, the way an operator or another agent would, with
the tool of the node's backend: what CHECK, the validator and repair must notice."""

from __future__ import annotations

from tests.support.node import NFT_FAMILY, Node, Pod


def nft_handle(node: Node, pod: Pod, family: int, chain: str, needle: str) -> str:
    """The handle of the first rule in one of our nft chains whose listing contains needle."""
    listing = node.exec(pod.netns, ["nft", "-a", "list", "chain", NFT_FAMILY[family], "microgateway", chain]).stdout
    for line in listing.splitlines():
        if needle in line and "# handle " in line:
            return line.rsplit("# handle ", 1)[1].strip()
    raise LookupError(f"no rule with {needle!r} in {chain}:\n{listing}")


TAMPERING: dict[str, tuple[list[list[str]], list[list[str]]]] = {
    # name: (iptables-legacy -t nat argument lists, nft argument lists with {family} and {handle:CHAIN:needle})
    "flush inbound": ([["-F", "MGW_INBOUND"]], [["flush", "chain", "{family}", "microgateway", "MGW_INBOUND"]]),
    "delete redirect": ([["-D", "MGW_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "13378"]],
                        [["delete", "rule", "{family}", "microgateway", "MGW_INBOUND", "handle",
                          "{handle:MGW_INBOUND:redirect to :13378}"]]),
    "redirect elsewhere": ([["-D", "MGW_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "13378"],
                            ["-A", "MGW_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "13379"]],
                           [["replace", "rule", "{family}", "microgateway", "MGW_INBOUND", "handle",
                             "{handle:MGW_INBOUND:redirect to :13378}", "meta", "l4proto", "tcp", "redirect", "to",
                             ":13379"]]),
    "replace a return": ([["-R", "MGW_INBOUND", "1", "-p", "tcp", "--dport", "13379", "-j", "RETURN"]],
                         [["replace", "rule", "{family}", "microgateway", "MGW_INBOUND", "handle",
                           "{handle:MGW_INBOUND:return}", "tcp", "dport", "13379", "return"]]),
    "insert a return": ([["-I", "MGW_INBOUND", "1", "-p", "tcp", "--dport", "8080", "-j", "RETURN"]],
                        [["insert", "rule", "{family}", "microgateway", "MGW_INBOUND", "tcp", "dport", "8080",
                          "return"]]),
    "delete prerouting jump": ([["-D", "PREROUTING", "-p", "tcp", "-j", "MGW_PREROUTING"]],
                               [["delete", "rule", "{family}", "microgateway", "nat-PREROUTING", "handle",
                                 "{handle:nat-PREROUTING:jump MGW_PREROUTING}"]]),
    "foreign rule": ([["-I", "MGW_OUTPUT", "1", "-p", "tcp", "-m", "comment", "--comment", "by hand", "-j", "RETURN"]],
                     [["insert", "rule", "{family}", "microgateway", "MGW_OUTPUT", "meta", "l4proto", "tcp", "counter",
                       "return"]]),
    "output loop": ([["-A", "MGW_OUTPUT", "-p", "tcp", "-j", "MGW_INBOUND"]],
                    [["add", "rule", "{family}", "microgateway", "MGW_OUTPUT", "meta", "l4proto", "tcp", "jump",
                      "MGW_INBOUND"]]),
}


def tamper(node: Node, pod: Pod, name: str, family: int = 4) -> None:
    """Change our rules the way TAMPERING[name] says, with the tool of the node's backend."""
    legacy, nft = TAMPERING[name]
    if node.backend == "iptables-legacy":
        tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
        for args in legacy:
            node.exec(pod.netns, [tool, "-t", "nat", *args])
        return
    for args in nft:
        resolved = []
        for arg in args:
            if arg == "{family}":
                arg = NFT_FAMILY[family]
            elif arg.startswith("{handle:"):
                chain, needle = arg[len("{handle:"):-1].split(":", 1)
                arg = nft_handle(node, pod, family, chain, needle)
            resolved.append(arg)
        node.exec(pod.netns, ["nft", *resolved])
