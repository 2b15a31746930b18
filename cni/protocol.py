"""The CNI wire protocol: versions, request parsing, result conversion, error objects.

Pure functions only; reading env/stdin and writing stdout happen in cni.main.
"""

from __future__ import annotations

import json

from cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    CniError,
)
from cni.records import record

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
NEWEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@record
class Request:
    """One plugin invocation: the command, its environment and its decoded network config."""

    command: str
    cni_version: str
    conf: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = {}  # noqa: RUF012 - never mutated; a NamedTuple default


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is `K=V;K=V`; a pair without '=' is an invalid environment, not something to guess."""
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: invalid pair {item!r}, expected KEY=VALUE")
        pairs[key] = value
    return pairs


def decode_stdin(raw: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is not valid JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    return conf


def check_version(version: Any) -> str:
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}",
            "supported: " + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


def build_request(env: dict[str, str], stdin: bytes) -> Request:
    """Validate the environment and stdin for every command but VERSION."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "CNI_COMMAND is not set")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    conf = decode_stdin(stdin)
    cni_version = check_version(conf.get("cniVersion"))
    if command in ("GC", "STATUS") and version_tuple(cni_version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or newer, got {cni_version}")
    if command == "CHECK" and version_tuple(cni_version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or newer, got {cni_version}")
    required = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}.get(command, ())
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENV, f"{command}: required environment variable(s) not set: {', '.join(missing)}")
    if command == "CHECK" and not isinstance(conf.get("prevResult"), dict):
        raise CniError(INVALID_CONFIG, "CHECK: prevResult is required")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, f"prevResult must be an object, got {type(prev).__name__}")
    return Request(
        command=command,
        cni_version=cni_version,
        conf=conf,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
    )


def version_result(stdin: bytes) -> dict[str, Any]:
    """VERSION answers even for versions it does not support, with what it does support."""
    requested = NEWEST_VERSION
    if stdin.strip():
        conf = decode_stdin(stdin)
        requested = conf.get("cniVersion") or NEWEST_VERSION
    return {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _ip_family(address: str) -> str:
    return "6" if ":" in address else "4"


def convert_result(prev: dict[str, Any] | None, to_version: str) -> dict[str, Any]:
    """Return prevResult unchanged in content, shaped for `to_version`.

    0.3.x/0.4.0 results carry `version` on each IP; 1.x results do not. A chained plugin that
    only observes must not lose interfaces, routes or DNS in the conversion.
    """
    result: dict[str, Any] = dict(prev or {})
    result["cniVersion"] = to_version
    legacy = version_tuple(to_version) < (1, 0, 0)
    ips = []
    for ip in result.get("ips") or []:
        ip = dict(ip)
        if legacy:
            ip.setdefault("version", _ip_family(str(ip.get("address", ""))))
        else:
            ip.pop("version", None)
        ips.append(ip)
    if "ips" in result:
        result["ips"] = ips
    return result


def result_has_ipv6(prev: dict[str, Any] | None) -> bool:
    return any(":" in str(ip.get("address", "")) for ip in (prev or {}).get("ips") or [])


def error_object(error: CniError, cni_version: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"cniVersion": cni_version, "code": error.code, "msg": error.msg}
    if error.details:
        obj["details"] = error.details
    return obj
