"""Another node agent writing a CNI conflist, and a reader watching it: separate processes in the race tests.

The agent stands in for a primary CNI (Calico, Cilium) that rewrites its whole conflist atomically
(temp file + rename). Each of its writes carries a generation in the first plugin's `mtu`. Before every
write it reads the file back: its previous document must still be there, alone or with the installer's
entry added; an older generation that stays means the installer wrote back a document the agent had
already replaced - a lost update. The reader checks the same from outside, on every document it sees:
the generation never goes back.

One kind of step back is allowed, and counted apart: the installer's document (ours), built from one
of the agent's earlier documents, swapped in just after the agent wrote a newer one and swapped back at
once (docs/design.md, "Writing files we do not own"). It is built from the agent's previous document
unless the agent wrote more than once between the installer's compare and its swap (seen only under
heavy load); how far back it went is reported. The agent then waits for its newest to come back. An
older document of the agent's own never may come back: that is a lost update.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PLUGIN_TYPE = "microgateway-cni"
BASE_MTU = 1400
READ_DEADLINE_SECONDS = 10.0  # a file that stays absent this long is a failure, not a race


def generation(document: dict[str, Any]) -> int:
    return int(document["plugins"][0]["mtu"]) - BASE_MTU


def with_generation(base: dict[str, Any], gen: int, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """The agent's document number `gen`; with `entry`, an agent that templates our entry in too."""
    plugins = [{**base["plugins"][0], "mtu": BASE_MTU + gen}, *base["plugins"][1:]]
    return {**base, "plugins": plugins + ([entry] if entry else [])}


def agent_part(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "plugins": [p for p in document["plugins"] if p.get("type") != PLUGIN_TYPE]}


def ours(document: dict[str, Any]) -> int:
    return sum(p.get("type") == PLUGIN_TYPE for p in document["plugins"])


def chained(document: dict[str, Any]) -> bool:
    """Our entry once, and last."""
    return ours(document) == 1 and document["plugins"][-1].get("type") == PLUGIN_TYPE


def write_atomic(path: Path, document: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.agent.tmp")
    temp.write_text(json.dumps(document, indent=2))
    os.replace(temp, path)


class Reading:
    """Figures of reads: how often the file was absent for a moment, unparsable, or held our entry."""

    def __init__(self) -> None:
        self.reads = self.absent = self.torn = self.chained = self.duplicates = 0

    def read(self, path: Path) -> dict[str, Any]:
        """The next complete document; an absent file is counted and read again."""
        deadline = time.monotonic() + READ_DEADLINE_SECONDS
        while True:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                self.absent += 1
                if time.monotonic() > deadline:
                    raise
                continue
            self.reads += 1
            try:
                document = json.loads(raw)
            except ValueError:
                self.torn += 1
                if time.monotonic() > deadline:
                    raise
                continue
            self.chained += chained(document)
            self.duplicates += ours(document) > 1
            return document


def followed(reading: Reading, path: Path, gen: int, copy: Path | None) -> bool:
    """Whether the installer followed generation `gen` within the deadline: our entry in the agent's file,
    or with `copy`, that generation with our entry in the installer's copy."""
    deadline = time.monotonic() + READ_DEADLINE_SECONDS
    while True:
        if copy is None:
            done = ours(reading.read(path)) == 1
        else:
            document = reading.read(copy)  # the installer's first copy, of the base document, has no generation
            done = "mtu" in document["plugins"][0] and generation(document) == gen and chained(document)
        if done or time.monotonic() >= deadline:
            return done
        time.sleep(0.001)


def ours_over_an_older(document: dict[str, Any], newest: int, base: dict[str, Any],
                       entry: dict[str, Any] | None) -> bool:
    """The one regression allowed: a document older than generation `newest` that is not what the agent
    wrote for its generation, so the installer's, swapped in for an instant."""
    gen = generation(document)
    return gen < newest and document != with_generation(base, gen, entry)


def run_agent(args: argparse.Namespace) -> dict[str, Any]:
    """Write generations 1..; before each write, check the previous one was not lost."""
    path = Path(args.path)
    copy = Path(args.copy) if args.copy else None
    base = json.loads(Path(args.base).read_text())
    entry = json.loads(args.entry) if args.entry else None
    reading = Reading()
    copy_reading = Reading()
    lost: list[str] = []
    foreign = rechained = not_rechained = writes = ours_back = lag = 0
    written: dict[str, Any] | None = None
    gen = args.start - 1
    while writes < args.writes and not (args.until and Path(args.until).exists()):
        if written is not None:
            seen = reading.read(path)
            if ours_over_an_older(seen, gen, base, entry):
                ours_back += 1
                lag = max(lag, gen - generation(seen))
                deadline = time.monotonic() + READ_DEADLINE_SECONDS
                while generation(seen) < gen and time.monotonic() < deadline:
                    seen = reading.read(path)
            if agent_part(seen) != agent_part(written):
                if generation(seen) < gen:
                    lost.append(f"wrote generation {gen}, found {generation(seen)}")
                else:
                    foreign += 1
        gen += 1
        written = with_generation(base, gen, entry)
        write_atomic(path, written)
        writes += 1
        if args.burst and writes % args.burst == 0:
            # Let the installer re-chain this document before the next burst races it.
            if followed(copy_reading if copy else reading, path, gen, copy):
                rechained += 1
            else:
                not_rechained += 1
    copy_figures = {"copy reads": copy_reading.reads, "copy absent": copy_reading.absent,
                    "copy torn": copy_reading.torn} if copy else {}
    return {"writes by the agent": writes, "last generation": gen, "lost": len(lost), "lost examples": lost[:5],
            "ours over an older": ours_back, "generations back at most": lag, "foreign": foreign,
            "bursts re-chained": rechained, "bursts not re-chained": not_rechained,
            "reads": reading.reads, "absent": reading.absent, "torn": reading.torn, "chained seen": reading.chained,
            "duplicate entries": reading.duplicates, **copy_figures}


def run_reader(args: argparse.Namespace) -> dict[str, Any]:
    """Read until the stop file appears; the generation of what we read must never go back, but for
    ours over an older document of the agent."""
    path = Path(args.path)
    base = json.loads(Path(args.base).read_text())
    entry = json.loads(args.entry) if args.entry else None
    reading = Reading()
    regressions: list[str] = []
    newest = ours_back = lag = 0
    while not Path(args.until).exists():
        document = reading.read(path)
        gen = generation(document)
        if ours_over_an_older(document, newest, base, entry):
            ours_back += 1
            lag = max(lag, newest - gen)
        elif gen < newest:
            regressions.append(f"saw generation {newest}, then {gen}")
        newest = max(newest, gen)
    return {"reads": reading.reads, "regressions": len(regressions), "regression examples": regressions[:5],
            "ours over an older": ours_back, "generations back at most": lag,
            "newest generation seen": newest, "absent": reading.absent, "torn": reading.torn,
            "chained seen": reading.chained, "duplicate entries": reading.duplicates}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    agent = sub.add_parser("agent")
    agent.add_argument("--path", required=True)
    agent.add_argument("--base", required=True, help="the primary's conflist the generations are made from")
    agent.add_argument("--start", type=int, default=1, help="generation of the first write")
    agent.add_argument("--writes", type=int, default=sys.maxsize, help="how many writes at most")
    agent.add_argument("--until", help="stop when this file exists")
    agent.add_argument("--burst", type=int, default=0, help="wait for the installer's entry after this many writes")
    agent.add_argument("--entry", help="JSON of our entry, for an agent whose template includes it")
    agent.add_argument("--copy", help="after a burst, wait for the installer's copy of the agent's file here "
                       "(ahead mode) instead of our entry in the agent's file")
    reader = sub.add_parser("reader")
    reader.add_argument("--path", required=True)
    reader.add_argument("--base", required=True, help="the agent's base document, to tell its documents from ours")
    reader.add_argument("--entry", help="JSON of our entry, if the agent's template includes it")
    reader.add_argument("--until", required=True)
    args = parser.parse_args()
    if args.role == "reader":
        print("ready", flush=True)
    figures = run_agent(args) if args.role == "agent" else run_reader(args)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
