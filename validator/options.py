"""The probe's options, declared once: the click CLI is built from this table, and the init container's
plain invocation is parsed from it without importing click.

click's import alone would take most of the verdict budget (docs/design.md, "Performance budget"),
so the common case - nothing but these options and MGW_VALIDATOR_* variables - takes the plain path.
Anything the plain parser is not sure about (--help, a subcommand, an unknown option, a value it would
have to reject) goes to click, which keeps the one source of usage errors and help text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cni.contract import ENGINE_PORT, PORT_RANGE, VALIDATION_PORT
from cni.records import record

ENV_PREFIX = "MGW_VALIDATOR_"
FAMILY_CHOICES = ("auto", "4", "6", "4,6")


@record
class Option:
    name: str  # the long option without its dashes
    kind: str  # "port", "seconds", "families" or "path"
    default: int | float | str
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


SECONDS_RANGE = (0.1, 300.0)

OPTIONS = (
    Option("engine-port", "port", ENGINE_PORT,
           "Port the redirection must land on; the validator listens there itself."),
    Option("validation-port", "port", VALIDATION_PORT, "Loopback port the validator connects to."),
    Option("deadline", "seconds", 3.0, "Seconds to keep retrying before giving up (fail closed)."),
    Option("families", "families", "auto", "Address families to probe; auto adds IPv6 when ::1 exists in the pod."),
    Option("termination-log", "path", "/dev/termination-log",
           "File for the human-readable verdict (Kubernetes termination message)."),
)
BY_NAME = {option.name: option for option in OPTIONS}


@record
class ProbeOptions:
    engine_port: int
    validation_port: int
    deadline: float
    families: str
    termination_log: str


def _plain_number(text: str) -> bool:
    """ASCII digits with at most one dot: what both parsers read the same way (no '1_000', no '²')."""
    return text.isascii() and text.count(".") <= 1 and text.replace(".", "", 1).isdigit()


def convert(option: Option, text: str) -> int | float | str | None:
    """The value, or None when click should judge it (and report the usage error)."""
    if option.kind == "port":
        if not text.isascii() or not text.isdigit():
            return None
        port = int(text)
        return port if PORT_RANGE[0] <= port <= PORT_RANGE[1] else None
    if option.kind == "seconds":
        if not _plain_number(text):
            return None
        seconds = float(text)
        return seconds if SECONDS_RANGE[0] <= seconds <= SECONDS_RANGE[1] else None
    if option.kind == "families":
        return text if text in FAMILY_CHOICES else None
    return text


def parse_plain(argv: Sequence[str], env: Mapping[str, str]) -> ProbeOptions | None:
    """Options from `--name value` / `--name=value` arguments over MGW_VALIDATOR_* over defaults,
    or None when the command line is anything else."""
    values: dict[str, int | float | str] = {}
    for option in OPTIONS:
        raw = env.get(option.env) or None  # click, too, ignores an empty variable
        value = option.default if raw is None else convert(option, raw)
        if value is None:
            return None
        values[option.field] = value
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            return None
        name, has_value, text = arg[2:].partition("=")
        found = BY_NAME.get(name)
        if found is None:
            return None
        option = found
        if not has_value:
            if not args or args[0].startswith("-"):
                return None
            text = args.pop(0)
        value = convert(option, text)
        if value is None:
            return None
        values[option.field] = value
    return ProbeOptions(**values)  # type: ignore[arg-type]
