"""microgateway-network-validator entry point: the plain probe without click, anything else with it."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from validator.verdict import EXIT_INTERNAL

    try:
        from validator.options import parse_plain

        options = parse_plain(sys.argv[1:], os.environ)
        if options is None:
            from validator.cli import probe

            probe.main(standalone_mode=True)
        else:
            from validator.verdict import run_probe

            sys.exit(run_probe(options))
    except SystemExit:
        raise
    except Exception as exc:
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n")
        sys.exit(EXIT_INTERNAL)
