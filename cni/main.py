"""microgateway-cni entry point: read env and stdin, run one CNI command, write one JSON to stdout.

This module is protocol glue. ADD and CHECK read top to bottom: start the applier (cni/pod/applier.py),
look the pod up (cni/policy.py, cni/kube.py), plan, then apply or inspect - or, for a pod that is not
protected, end the applier without a job. DEL removes through every backend (cni/netfilter/) in-process.
Only the modules a command needs are imported, because this runs on every pod start of every node.
"""

from __future__ import annotations

import json
import os
import sys

from cni.config import PluginConfig, parse_config
from cni.errors import CHECK_MISMATCH, CniError
from cni.log import Logger
from cni.protocol import (
    NEWEST_VERSION,
    Request,
    build_request,
    convert_result,
    error_object,
    result_has_ipv6,
    version_result,
)

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from cni.netfilter.backend import Backend
    from cni.pod.applier import Applier
    from cni.pod.runner import InProcess
    from cni.policy import PodFacts

    Lookup = Callable[[Request, PluginConfig], PodFacts]
    StartApplier = Callable[[Request, PluginConfig], Applier]

INTERNAL_ERROR = 999


def lookup_pod(request: Request, config: PluginConfig) -> PodFacts:
    """The runtime's annotations when they are conclusive, else the pod from the API. When the API cannot
    tell, the runtime's annotations decide if it handed them, else the lookup fails closed."""
    from cni import policy

    facts = policy.from_runtime(request.conf)
    if facts is not None:
        return facts
    from cni import kube

    try:
        cluster = kube.load_cluster(config.kubeconfig)
        pod = kube.get_pod(cluster, request.args.get("K8S_POD_NAMESPACE", ""),
                           request.args.get("K8S_POD_NAME", ""), config.api_deadline_seconds)
    except kube.ApiUnavailable as exc:
        unverified = policy.without_api(request.conf, exc.msg)
        if unverified is None:
            raise
        return unverified
    return policy.from_api(pod)


def start_applier(request: Request, config: PluginConfig) -> Applier:
    """The pod's applier: a backend that needs preparing gets a forked worker, which prepares it while
    the pod is looked up; one that does not runs its job in this process (cni/pod/runner.py)."""
    from cni.pod.applier import Applier
    from cni.pod.runner import InProcess, Worker

    backend = load_backend(config)
    runner = Worker(backend.prepare) if backend.needs_worker else InProcess(backend.prepare)
    return Applier(backend, request.netns, result_has_ipv6(request.conf.get("prevResult")), runner)


def load_backend(config: PluginConfig) -> Backend:
    """The conflist's backend, or for `auto` the node's (read in the runtime's netns)."""
    from cni.netfilter import choice

    return choice.load(choice.choose(config.netfilter_backend))


def remove_from_every_backend() -> list[str]:
    """DEL removes ours from every backend: the node may have switched since the pod's ADD."""
    from cni.netfilter.choice import remove_everywhere

    return remove_everywhere()


def _skip_reason(request: Request, config: PluginConfig) -> str:
    from cni.policy import skip_reason

    return skip_reason(request.args.get("K8S_POD_NAMESPACE", ""), request.args.get("K8S_POD_NAME", ""), config)


def cmd_add(request: Request, config: PluginConfig, logger: Logger, lookup: Lookup = lookup_pod,
            start: StartApplier = start_applier) -> dict[str, Any]:
    result = convert_result(request.conf.get("prevResult"), request.cni_version)
    reason = _skip_reason(request, config)
    if reason:
        logger.debug("passed through", reason=reason)
        return result
    with start(request, config) as applier:  # prepares the backend while the pod is looked up
        logger.debug("netfilter backend", backend=applier.backend.name, configured=config.netfilter_backend)
        pod = lookup(request, config)
        if pod.unverified:
            logger.warn("passed through: the API cannot tell the pod's labels and its annotations do not protect it",
                        reason=pod.unverified,
                        guard="a pod protected by its label alone is refused by its validator")
            return result
        if not pod.protected:
            logger.debug("passed through", reason="pod is not protected")
            return result
        from cni.policy import plan_for

        plan = plan_for(pod.annotations, config.non_tcp_inbound)  # invalid annotations fail before the netns is touched
        families = applier.configure(plan, config)
    logger.info("redirection configured", backend=applier.backend.name, families=families, mesh=plan.mesh,
                source=pod.source)
    return result


def cmd_check(request: Request, config: PluginConfig, logger: Logger, lookup: Lookup = lookup_pod,
              start: StartApplier = start_applier) -> None:
    if _skip_reason(request, config):
        return
    with start(request, config) as applier:
        logger.debug("netfilter backend", backend=applier.backend.name, configured=config.netfilter_backend)
        pod = lookup(request, config)
        if not pod.protected:
            return
        from cni.policy import plan_for

        problems = applier.inspect(plan_for(pod.annotations, config.non_tcp_inbound), config)
    if problems:
        raise CniError(CHECK_MISMATCH, "netfilter rules differ from what ADD configures", "; ".join(problems))


def cmd_del(request: Request, config: PluginConfig, logger: Logger,
            remove: Callable[[], list[str]] = remove_from_every_backend, runner: InProcess | None = None) -> None:
    """Never fails because of the netns or netfilter: a failing DEL would stop libcni's chain and leave
    the pod stuck Terminating, and our rules live only in the netns, which goes right after DEL (a
    netns whose mount was already torn down is an ordinary file: its rules went with it)."""
    from cni.pod.netns import NetnsGone
    from cni.pod.runner import InProcess

    if not request.netns:
        logger.debug("DEL without netns: nothing to remove")
        return
    try:
        removed = (runner or InProcess()).run(request.netns, remove)
    except NetnsGone:
        logger.debug("netns already gone: nothing to remove")
        return
    except CniError as exc:
        logger.warn("could not remove rules; they go with the netns", error=exc.msg)
        return
    if removed:
        logger.info("redirection removed", backends=removed)


def cmd_gc(request: Request, config: PluginConfig, logger: Logger) -> None:
    """Nothing to collect: every rule lives inside a pod netns and dies with it; ADD writes no host
    state (no files, no IPAM, no host rules). Keep it that way, or implement GC here."""
    logger.debug("GC: no host state to collect")


def cmd_status(request: Request, config: PluginConfig, logger: Logger) -> None:
    """Ready whenever the conflist entry is valid (checked before any command). On containerd 2 an error
    here turns the node's NetworkReady false, and the kubelet marks the whole node NotReady: every pod,
    the installer that would mend us among them. An unusable kubeconfig or an API that is down concerns
    the pods we must look up, and ADD refuses those itself (docs/design.md, "STATUS")."""
    logger.debug("STATUS: ready")


COMMANDS: dict[str, Callable[[Request, PluginConfig, Logger], dict[str, Any] | None]] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def _reply_version(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return NEWEST_VERSION
    return version if isinstance(version, str) and version else NEWEST_VERSION


def run(env: dict[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """Exit code and the JSON document for stdout (None: print nothing)."""
    logger = Logger()
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            return 0, version_result(stdin)
        request = build_request(env, stdin)
        config = parse_config(request.conf)
        logger = Logger(config.log_level, config.log_file_path, {
            "command": request.command, "containerID": request.container_id[:12],
            "pod": f"{request.args.get('K8S_POD_NAMESPACE', '')}/{request.args.get('K8S_POD_NAME', '')}",
        })
        result = COMMANDS[request.command](request, config, logger)
        return 0, result
    except CniError as exc:
        logger.error(exc.msg, code=exc.code, details=exc.details)
        return 1, error_object(exc, _reply_version(stdin))
    except Exception as exc:
        import traceback

        logger.error("internal error", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        internal = CniError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        return 1, error_object(internal, _reply_version(stdin))


def main() -> None:
    """Exit without the interpreter's teardown: nothing is left to release (every worker is reaped,
    the log file is written unbuffered), and freeing every module's objects is paid on each pod start
    and stop."""
    code, document = run(dict(os.environ), sys.stdin.buffer.read())
    if document is not None:
        sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
