"""An installer that chains the plugin and is killed (SIGKILL) right after its swap, before it checks what
the swap displaced: what a node is left with when the installer's container dies at that instant.

Settings come from the environment, as for the installer itself. With --agent-writes, the primary's
agent writes that document between the installer's compare and its swap, so the swap displaces it.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from daemonset import foreign_files
from daemonset.install import Installer
from daemonset.settings import from_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent-file", required=True, help="the primary's conflist")
    parser.add_argument("--agent-writes", help="a document the agent writes just before the swap")
    args = parser.parse_args()
    real_exchange = foreign_files._exchange

    def exchange_then_die(a: str, b: str) -> None:
        if args.agent_writes is not None:
            temp = Path(args.agent_file).with_name(".agent.tmp")
            temp.write_text(args.agent_writes)
            os.replace(temp, args.agent_file)
        real_exchange(a, b)
        os.kill(os.getpid(), signal.SIGKILL)

    foreign_files._exchange = exchange_then_die
    Installer(from_env(os.environ), lambda *a, **k: None).chain()


if __name__ == "__main__":
    main()
