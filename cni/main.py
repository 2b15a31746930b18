"""microgateway-cni entry point: read env and stdin, run one CNI command, write one JSON to stdout.

Only the modules a command needs are imported (python-iptables only for ADD and CHECK, and only in a
forked worker that imports it while the parent asks the API), because this runs on every pod start
of every node.
"""

from __future__ import annotations

import json
import os
import sys

from cni.config import PluginConfig, parse_config
from cni.errors import CHECK_MISMATCH, STATUS_NOT_AVAILABLE, CniError
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

TYPE_CHECKING = False  # typing costs ~8 ms of a frozen start (cni/records.py): annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
INTERNAL_ERROR = 999


def _pod_metadata(request: Request, config: PluginConfig, logger: Logger) -> tuple[bool, dict[str, str]]:
    """(protected, annotations); the API is asked only when the runtime's annotations are not conclusive."""
    from cni.policy import INJECT, is_protected

    namespace = request.args.get("K8S_POD_NAMESPACE", "")
    name = request.args.get("K8S_POD_NAME", "")
    runtime_annotations = (request.conf.get("runtimeConfig") or {}).get(POD_ANNOTATIONS_CAPABILITY)
    if isinstance(runtime_annotations, dict) and runtime_annotations.get(INJECT) == "true":
        logger.debug("protected by runtime-supplied annotation; API not asked")
        return True, {str(k): str(v) for k, v in runtime_annotations.items()}
    from cni import kube

    cluster = kube.load_cluster(config.kubeconfig)
    pod = kube.get_pod(cluster, namespace, name, config.api_deadline_seconds)
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return is_protected(labels, annotations), annotations


def _skip_reason(request: Request, config: PluginConfig) -> str:
    from cni.policy import skip_reason

    return skip_reason(request.args.get("K8S_POD_NAMESPACE", ""), request.args.get("K8S_POD_NAME", ""), config)


def _families(request: Request) -> list[int]:
    from cni.netns import has_ipv6

    prev = request.conf.get("prevResult")
    return [4, 6] if has_ipv6() or result_has_ipv6(prev) else [4]


def _enter(request: Request) -> None:
    from cni.netns import enter_pod

    enter_pod(request.netns)


def _expected_rulesets(request: Request, config: PluginConfig, plan: Any) -> list[Any]:
    """Call inside the pod netns: the families come from its addresses."""
    from cni.rules import build_ruleset

    return [build_ruleset(plan, config, family) for family in _families(request)]


def _backend(config: PluginConfig, logger: Logger) -> str:
    from cni.backend import choose

    chosen = choose(config.netfilter_backend)
    logger.debug("netfilter backend", backend=chosen, configured=config.netfilter_backend)
    return chosen


def _remove_legacy_leftovers(logger: Logger) -> None:
    """Inside the pod netns: our legacy chains from before the node switched to nftables, if any.
    The legacy nat table is only opened where it already exists, so it is never created here."""
    from cni.netns import legacy_nat_loaded

    families = [family for family in (4, 6) if legacy_nat_loaded(family)]
    if families:
        from cni import netfilter

        if netfilter.remove(families):
            logger.info("legacy rules from another backend removed", families=families)


def _add_nftables(request: Request, config: PluginConfig, logger: Logger) -> dict[str, Any]:
    """ADD with native nftables: no worker and no heavy import, the batch is written in-process."""
    result = convert_result(request.conf.get("prevResult"), request.cni_version)
    protected, annotations = _pod_metadata(request, config, logger)
    if not protected:
        logger.debug("passed through", reason="pod is not protected")
        return result
    from cni import nftables
    from cni.policy import plan_for

    plan = plan_for(annotations)  # invalid annotations fail before the netns is touched
    _enter(request)
    rulesets = _expected_rulesets(request, config, plan)
    nftables.apply(rulesets)
    _remove_legacy_leftovers(logger)
    logger.info("redirection configured", backend="nftables", families=[rs.family for rs in rulesets],
                mesh=plan.mesh)
    return result


def cmd_add(request: Request, config: PluginConfig, logger: Logger) -> dict[str, Any]:
    result = convert_result(request.conf.get("prevResult"), request.cni_version)
    reason = _skip_reason(request, config)
    if reason:
        logger.debug("passed through", reason=reason)
        return result
    from cni.backend import NFTABLES

    if _backend(config, logger) == NFTABLES:
        return _add_nftables(request, config, logger)
    from cni import netfilter

    with netfilter.worker() as worker:  # imports python-iptables while the API is asked
        protected, annotations = _pod_metadata(request, config, logger)
        if not protected:
            logger.debug("passed through", reason="pod is not protected")
            return result
        from cni.policy import plan_for

        plan = plan_for(annotations)  # invalid annotations fail before the netns is touched
        _enter(request)
        rulesets = _expected_rulesets(request, config, plan)
        worker.run(request.netns, netfilter.apply_families, rulesets)
    from cni import nftables

    if nftables.remove():
        logger.info("nftables rules from another backend removed")
    logger.info("redirection configured", backend="iptables-legacy", families=[rs.family for rs in rulesets],
                mesh=plan.mesh)
    return result


def cmd_del(request: Request, config: PluginConfig, logger: Logger) -> None:
    """Removes ours from both backends, whichever the node uses now: it may have switched since ADD."""
    from cni.netns import NetnsGone, enter, legacy_nat_loaded

    if not request.netns:
        logger.debug("DEL without netns: nothing to remove")
        return
    try:
        enter(request.netns)
    except NetnsGone:
        logger.debug("netns already gone: nothing to remove")
        return
    except CniError as exc:
        # A netns whose mount was already torn down is an ordinary file: its rules died with it.
        logger.warn("netns not usable on DEL, treating it as gone", error=exc.msg)
        return
    from cni import nftables

    # Failing DEL would stop libcni's chain and leave the pod stuck Terminating; the rules live only
    # in this netns, which the runtime destroys right after DEL. So failures are logged, never raised.
    try:
        if nftables.remove():
            logger.info("redirection removed", backend="nftables")
    except CniError as exc:
        logger.warn("could not remove nftables rules; they go with the netns", error=exc.msg)
    families = [family for family in (4, 6) if legacy_nat_loaded(family)]
    if not families:
        return
    from cni import netfilter

    try:
        if netfilter.remove(families):
            logger.info("redirection removed", backend="iptables-legacy", families=families)
    except CniError as exc:
        logger.warn("could not remove rules; they go with the netns", error=exc.msg)


def _diff(family: int, expected: list[Any], live: list[Any], render: Callable[[Any, int], str]) -> str:
    missing = [render(rule, family) for rule in expected if rule not in live]
    unexpected = [rule if isinstance(rule, str) else render(rule, family) for rule in live if rule not in expected]
    if missing or unexpected:
        parts = [f"missing IPv{family}: {r}" for r in missing] + [f"unexpected IPv{family}: {r}" for r in unexpected]
        return "; ".join(parts)
    return f"IPv{family} rules are out of order" if expected != live else ""


def _check_nftables(request: Request, config: PluginConfig, logger: Logger) -> None:
    protected, annotations = _pod_metadata(request, config, logger)
    if not protected:
        return
    from cni import nftables
    from cni.policy import plan_for

    plan = plan_for(annotations)
    _enter(request)
    expected = _expected_rulesets(request, config, plan)
    live = nftables.read([rs.family for rs in expected])
    problems = []
    for ruleset in expected:
        rules, jumps = live[ruleset.family]
        problems.extend(p for p in (_diff(ruleset.family, list(ruleset.rules), rules, nftables.describe),
                                     _diff(ruleset.family, list(ruleset.jumps), jumps, nftables.describe)) if p)
    if problems:
        raise CniError(CHECK_MISMATCH, "nftables rules differ from what ADD configures", "; ".join(problems))


def cmd_check(request: Request, config: PluginConfig, logger: Logger) -> None:
    if _skip_reason(request, config):
        return
    from cni.backend import NFTABLES

    if _backend(config, logger) == NFTABLES:
        _check_nftables(request, config, logger)
        return
    from cni import netfilter

    with netfilter.worker() as worker:
        protected, annotations = _pod_metadata(request, config, logger)
        if not protected:
            return
        from cni.policy import plan_for

        plan = plan_for(annotations)
        _enter(request)
        expected = _expected_rulesets(request, config, plan)
        live = worker.run(request.netns, netfilter.read_families, [rs.family for rs in expected])
    problems = []
    for ruleset in expected:
        rules, jumps = live[ruleset.family]
        ordered = sorted(ruleset.rules, key=lambda rule: rule.chain)
        problems.extend(p for p in (_diff(ruleset.family, ordered, rules, _iptables_syntax),
                                     _diff(ruleset.family, list(ruleset.jumps), jumps, _iptables_syntax)) if p)
    if problems:
        raise CniError(CHECK_MISMATCH, "netfilter rules differ from what ADD configures", "; ".join(problems))


def _iptables_syntax(rule: Any, family: int) -> str:
    return rule.render()


def cmd_gc(request: Request, config: PluginConfig, logger: Logger) -> None:
    """Nothing to collect: every rule lives inside a pod netns and dies with it; ADD writes no host
    state (no files, no IPAM, no host rules). Keep it that way, or implement GC here."""
    logger.debug("GC: no host state to collect")


def cmd_status(request: Request, config: PluginConfig, logger: Logger) -> None:
    from cni import kube

    try:
        kube.load_cluster(config.kubeconfig)
    except CniError as exc:
        raise CniError(STATUS_NOT_AVAILABLE, f"plugin not ready: {exc.msg}") from None


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


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
    code, document = run(dict(os.environ), sys.stdin.buffer.read())
    if document is not None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()
    sys.exit(code)
