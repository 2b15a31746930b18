"""Choosing and rewriting the node's CNI configuration. Pure: documents in, documents out.

libcni (and so containerd and CRI-O) uses the lexically first file in the conf dir ending in
.conf, .conflist or .json that parses; a .conf holds one plugin, which chaining turns into a
.conflist with the same content as its first plugin.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from cni.contract import PLUGIN_TYPE

CONF_EXTENSIONS = (".conf", ".conflist", ".json")
STANDALONE_NAME = "05-microgateway-cni.conflist"
# Ahead mode's copy of the primary with our entry: libcni loads the lexically first file, so it must sort
# before the primary's name (docs/design.md, "Ahead mode").
AHEAD_NAME = "00-microgateway-cni.conflist"
OWN_NAMES = (AHEAD_NAME, STANDALONE_NAME)


class Primary(NamedTuple):
    """The config file libcni would load, parsed into a conflist document."""

    name: str
    document: dict[str, Any]
    was_single: bool
    raw: bytes  # the file's bytes as read: a later write is committed only if they are still there


def parse(name: str, raw: bytes) -> Primary | None:
    """A conflist document for a file libcni would accept, else None (skipped, like libcni does)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("plugins"), list) and doc["plugins"]:
        if all(isinstance(p, dict) and p.get("type") for p in doc["plugins"]):
            return Primary(name, doc, was_single=False, raw=raw)
        return None
    if name.endswith(".conflist"):
        return None
    if not doc.get("type"):
        return None
    single = dict(doc)
    conflist = {"cniVersion": single.pop("cniVersion", "0.3.1"), "name": single.pop("name", "k8s-pod-network"),
                "plugins": [single]}
    return Primary(name, conflist, was_single=True, raw=raw)


def choose_primary(files: dict[str, bytes]) -> Primary | None:
    """The file libcni would load if none of ours were there."""
    for name in sorted(files):
        if not name.endswith(CONF_EXTENSIONS) or name in OWN_NAMES:
            continue
        primary = parse(name, files[name])
        if primary is not None:
            return primary
    return None


def target_name(primary: Primary) -> str:
    """A chained single-plugin .conf is written as .conflist beside the primary's base name."""
    if primary.was_single:
        return primary.name.rsplit(".", 1)[0] + ".conflist"
    return primary.name


def with_entry(document: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The conflist with exactly one plugin entry of ours, last; everything else kept as it was."""
    plugins = [p for p in document["plugins"] if p.get("type") != PLUGIN_TYPE]
    return {**document, "plugins": [*plugins, entry]}


def without_entry(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "plugins": [p for p in document["plugins"] if p.get("type") != PLUGIN_TYPE]}


def has_entry(document: dict[str, Any]) -> bool:
    return any(p.get("type") == PLUGIN_TYPE for p in document["plugins"])


def is_chained(document: dict[str, Any], entry: dict[str, Any]) -> bool:
    ours = [p for p in document.get("plugins", []) if p.get("type") == PLUGIN_TYPE]
    return len(ours) == 1 and document["plugins"][-1] == entry


def ahead(primary: Primary, entry: dict[str, Any]) -> dict[str, Any] | None:
    """Ahead mode's document: the primary's conflist with our entry last. None when the primary's name
    sorts before ours, so that libcni would never load the copy."""
    if primary.name < AHEAD_NAME:
        return None
    return with_entry(primary.document, entry)


def render(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def standalone(entry: dict[str, Any], cni_version: str = "1.0.0") -> dict[str, Any]:
    """Own conflist for Multus/OpenShift, which chain it themselves."""
    return {"cniVersion": cni_version, "name": "microgateway-cni", "plugins": [entry]}
