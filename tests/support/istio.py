"""Istio's REDIRECT-mode nat rules as `istio-iptables` writes them in a pod, for fixtures
(docs/design.md, "Istio fixture")."""

from __future__ import annotations

LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
PASSTHROUGH = {4: "127.0.0.6/32", 6: "::6/128"}


def istio_rules(family: int, exclude_inbound: tuple[int, ...] = ()) -> str:
    lo, passthrough = LOOPBACK[family], PASSTHROUGH[family]
    lines = ["*nat", ":ISTIO_INBOUND - [0:0]", ":ISTIO_REDIRECT - [0:0]", ":ISTIO_IN_REDIRECT - [0:0]",
             ":ISTIO_OUTPUT - [0:0]",
             "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
             "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
             "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
             "-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    lines += [f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in (15020, 15021, 15090, *exclude_inbound)]
    lines += ["-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
              "-A OUTPUT -j ISTIO_OUTPUT",
              f"-A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN"]
    for owner in ("uid-owner", "gid-owner"):
        lines += [f"-A ISTIO_OUTPUT -o lo ! -d {lo} -p tcp ! --dport 15008 -m owner --{owner} 1337"
                  " -j ISTIO_IN_REDIRECT",
                  f"-A ISTIO_OUTPUT -o lo -m owner ! --{owner} 1337 -j RETURN",
                  f"-A ISTIO_OUTPUT -m owner --{owner} 1337 -j RETURN"]
    lines += [f"-A ISTIO_OUTPUT -d {lo} -j RETURN", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "COMMIT", ""]
    return "\n".join(lines)
