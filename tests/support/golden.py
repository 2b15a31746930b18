"""Golden rule sets: the rules a protected pod gets for each annotation case, in iptables-save syntax.

tests/golden/<case>-v4.rules and -v6.rules hold just our part of the nat table, then of the filter
table (RuleSet.render() of each).
Unit tests compare build_rulesets with them and integration tests a live pod's iptables-legacy-save,
so the files are the reviewed record of the rule design. MGW_UPDATE_GOLDEN=1 rewrites them from the
unit tests' output; review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

from cni.contract import ALLOW_INBOUND_UDP_PORTS as ALLOW_UDP
from cni.contract import EXCLUDE_INBOUND_PORTS as EXCLUDE
from cni.contract import NON_TCP_INBOUND as NON_TCP
from cni.contract import SERVICE_MESH as MESH
from cni.policy import ISTIO_EXCLUDE_INBOUND as ISTIO_EXCLUDE
from cni.policy import ISTIO_INCLUDE_INBOUND as ISTIO_INCLUDE

DIR = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("MGW_UPDATE_GOLDEN") == "1"

CASES: dict[str, dict[str, str]] = {
    "no-mesh": {},
    "excluded-ports": {EXCLUDE: "8081, 9090, 9091"},
    "istio-all": {MESH: "istio"},
    "istio-all-uncaptured": {MESH: "istio", ISTIO_EXCLUDE: "7070,7071,15020", EXCLUDE: "8081"},
    "istio-include-exclude": {MESH: "istio", ISTIO_INCLUDE: "8080,9090", ISTIO_EXCLUDE: "9090"},
    "istio-include-none": {MESH: "istio", ISTIO_INCLUDE: ""},
    "udp-allowed": {ALLOW_UDP: "5353, 9000, 9001", EXCLUDE: "8081"},
    "non-tcp-allowed": {NON_TCP: "allow", ALLOW_UDP: "5353"},
}
TABLES = ("nat", "filter")


SUFFIXES = (".rules", ".nft")  # iptables-save syntax, `nft list table` syntax


def path(case: str, family: int, suffix: str = ".rules") -> Path:
    return DIR / f"{case}-v{family}{suffix}"


def ours(save: str, table: str = "nat") -> str:
    """Our part of iptables-save output: the table line, our chain declarations, every rule naming an
    MGW_ chain, COMMIT - the shape RuleSet.render() writes."""
    lines, inside = [], False
    for line in save.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
            if inside:
                lines.append(line)
        elif not inside:
            continue
        elif line == "COMMIT":
            lines.append(line)
            inside = False
        elif line.startswith(":MGW_"):
            lines.append(line.split(" ")[0] + " - [0:0]")
        elif line.startswith("-A ") and "MGW_" in line:
            lines.append(line)
    return "\n".join(lines) + "\n"


def ours_in_tables(save: str) -> str:
    """Our part of every table we write, in the golden files' order."""
    return "".join(ours(save, table) for table in TABLES)


def check(case: str, family: int, text: str, update: bool = False, suffix: str = ".rules") -> None:
    """Assert text equals the golden file; with update (the unit tests under MGW_UPDATE_GOLDEN=1), write it."""
    golden = path(case, family, suffix)
    if update and UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run the unit tests with MGW_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{golden.name} differs (MGW_UPDATE_GOLDEN=1 rewrites it):\n{text}"
