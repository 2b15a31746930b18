"""No import circle in cni/: neither between modules nor between its packages (docs/design.md, "Backend
seam"). Every import counts, those inside functions and under TYPE_CHECKING included: a lazy import
hides a circle from Python, not from a reader.

`python tests/unit/test_imports.py` prints the module graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "cni"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The cni modules `path` imports (a `from package import module` names the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def module_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between cni's top-level modules and sub-packages (cni.netfilter, cni.pod)."""
    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, targets in modules.items():
        graph.setdefault(unit(name), set()).update(unit(target) for target in targets)
    return {name: targets - {name} for name, targets in graph.items()}


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, as the modules around it; empty when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str]:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return []
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if found := visit(target):
                return found
        path.pop()
        done.add(name)
        return []

    for name in sorted(graph):
        if found := visit(name):
            return found
    return []


def test_no_import_circle_between_modules():
    assert cycle(module_graph()) == []


def test_no_import_circle_between_packages():
    assert cycle(package_graph(module_graph())) == []


def test_the_interface_imports_no_backend():
    graph = module_graph()
    assert not {target for target in graph["cni.netfilter.backend"] if target.startswith("cni.netfilter.")}


def test_the_nftables_encoder_and_decoder_do_not_import_each_other():
    """ADD and DEL encode, only CHECK decodes (the backend imports the decoder when it reads)."""
    graph = module_graph()
    encoder, decoder = "cni.netfilter.nftables.encoder", "cni.netfilter.nftables.decoder"
    assert decoder not in graph[encoder] and encoder not in graph[decoder]


def test_the_check_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


if __name__ == "__main__":
    modules = module_graph()
    for name, targets in sorted(modules.items()):
        print(f"{name} -> {', '.join(sorted(targets)) or '-'}")
    print()
    for name, targets in sorted(package_graph(modules).items()):
        print(f"{name} => {', '.join(sorted(targets)) or '-'}")
    found = cycle(modules) or cycle(package_graph(modules))
    print("\ncircle: " + " -> ".join(found) if found else "\nno import circle")
    sys.exit(1 if found else 0)
