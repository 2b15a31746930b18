"""The init container's verdict: run the probe, write the termination message and one JSON line, and
return the exit code (docs/design.md, "Contract"): 0 redirection works, 3 redirection not working."""

from __future__ import annotations

import sys
import time

from cni.contract import EXIT_NOT_REDIRECTED
from validator.jsonline import dumps
from validator.options import ProbeOptions
from validator.probe import PortInUse, ProbeResult, ipv6_loopback_present, probe_families

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

ADVICE = ("Check that the microgateway-cni DaemonSet runs and is ready on this node, that the pod does not use "
          "hostNetwork, and that microgateway-cni is chained in the node's CNI configuration. After fixing, "
          "delete this pod so that it is recreated with the redirection in place; the application must not "
          "serve traffic without the Engine in front of it.")


def families_for(option: str) -> list[int]:
    if option == "auto":
        return [4, 6] if ipv6_loopback_present() else [4]
    return [int(f) for f in option.split(",")]


def _write_termination(path: str, message: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(message)
    except OSError as exc:
        sys.stderr.write(f"cannot write termination message to {path}: {exc}\n")


def _failure_message(results: list[ProbeResult], engine_port: int, validation_port: int) -> str:
    failed = [r for r in results if not r.ok]
    what = "; ".join(f"IPv{r.family}: {r.outcome} ({r.detail}) after {r.attempts} attempts" for r in failed)
    return (f"Airlock Microgateway network validation failed: connections to port {validation_port} inside this pod "
            f"are not redirected to the Engine port {engine_port} — {what}. {ADVICE}")


def _print_line(document: dict[str, object]) -> None:
    sys.stdout.write(dumps(document) + "\n")
    sys.stdout.flush()


def run_probe(options: ProbeOptions) -> int:
    start = time.monotonic()
    try:
        results = probe_families(families_for(options.families), options.engine_port, options.validation_port,
                                 start + options.deadline)
    except PortInUse as exc:
        message = (f"Airlock Microgateway network validation failed: port {options.engine_port} is already in use "
                   f"at {exc} before the Engine started, so the redirection cannot be verified. Another container "
                   f"in the pod must not listen on the Engine port. {ADVICE}")
        _write_termination(options.termination_log, message)
        _print_line({"verdict": "fail", "reason": "engine-port-in-use", "address": str(exc),
                     "ms": round((time.monotonic() - start) * 1000, 2)})
        return EXIT_NOT_REDIRECTED
    ok = all(r.ok for r in results)
    _print_line({"verdict": "pass" if ok else "fail", "probes": [r.as_dict() for r in results],
                 "ms": round((time.monotonic() - start) * 1000, 2)})
    if ok:
        _write_termination(options.termination_log, "Airlock Microgateway network validation passed: "
                           + ", ".join(f"IPv{r.family}" for r in results) + " redirected to the Engine.")
        return EXIT_OK
    _write_termination(options.termination_log,
                       _failure_message(results, options.engine_port, options.validation_port))
    return EXIT_NOT_REDIRECTED
