"""The validator's plain option parser: it must read exactly what click reads, or step aside (None)."""

from __future__ import annotations

import contextlib

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validator.cli import probe
from validator.options import OPTIONS, ProbeOptions, parse_plain

DEFAULTS = ProbeOptions(13378, 19003, 3.0, "auto", "/dev/termination-log")


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([], {}, DEFAULTS),
    (["--termination-log", "/dev/null"], {}, DEFAULTS._replace(termination_log="/dev/null")),
    (["--engine-port=15000", "--families", "4,6"], {}, DEFAULTS._replace(engine_port=15000, families="4,6")),
    ([], {"MGW_VALIDATOR_DEADLINE": "0.5", "MGW_VALIDATOR_FAMILIES": "6"},
     DEFAULTS._replace(deadline=0.5, families="6")),
    (["--deadline", "10"], {"MGW_VALIDATOR_DEADLINE": "0.5"}, DEFAULTS._replace(deadline=10.0)),
    (["--families=4", "--families=6"], {}, DEFAULTS._replace(families="6")),
    ([], {"MGW_VALIDATOR_TERMINATION_LOG": ""}, DEFAULTS),
    ([], {"UNRELATED": "x"}, DEFAULTS),
    # everything below is click's to judge: help, subcommands, unknown or invalid input
    (["--help"], {}, None),
    (["diagnose"], {}, None),
    (["--engine-port"], {}, None),
    (["--engine-port", "0"], {}, None),
    (["--engine-port", "65536"], {}, None),
    (["--engine-port", "1_000"], {}, None),
    (["--engine-port", "²"], {}, None),
    (["--deadline", "0.05"], {}, None),
    (["--deadline", "1e1"], {}, None),
    (["--families", "4,6,8"], {}, None),
    (["--termination-log", "--deadline"], {}, None),
    (["--verbose"], {}, None),
    (["-h"], {}, None),
    ([], {"MGW_VALIDATOR_ENGINE_PORT": "http"}, None),
])
def test_parse_plain(argv: list[str], env: dict[str, str], expected: ProbeOptions | None) -> None:
    assert parse_plain(argv, env) == expected


def _click_reads(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ProbeOptions | None:
    """What click hands to the probe for this command line (None: a usage error, help or a subcommand)."""
    seen: list[ProbeOptions] = []
    monkeypatch.setattr("validator.cli.run_probe", lambda options: seen.append(options) or 0)
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with contextlib.suppress(click.ClickException, click.exceptions.Exit, SystemExit):
        probe.main(list(argv), prog_name="microgateway-network-validator", standalone_mode=False)
    return seen[0] if seen else None


VALUE = st.one_of(st.sampled_from(["0", "1", "13378", "65535", "65536", "0.1", "3", "2.5", "300", "301", "auto",
                                   "4", "6", "4,6", "", "/dev/null", "-1", "1_0", "٣"]), st.text(max_size=4))
ARG = st.one_of(st.sampled_from([f"--{o.name}" for o in OPTIONS] + ["--help", "diagnose", "--x"]),
                st.builds(lambda o, v: f"--{o.name}={v}", st.sampled_from(OPTIONS), VALUE), VALUE)


@settings(max_examples=300, deadline=None)
@given(argv=st.lists(ARG, max_size=5), env=st.dictionaries(st.sampled_from([o.env for o in OPTIONS]), VALUE))
def test_plain_parser_agrees_with_click_whenever_it_answers(argv: list[str], env: dict[str, str]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        plain = parse_plain(argv, env)
        if plain is not None:
            assert plain == _click_reads(argv, env, monkeypatch)
