"""Every module the sources import, on any command path, is in the bundle that runs them.

The sources are read, not run: each import statement reachable from a bundle's entry point (also the
ones inside functions, like cni/kube.py's `import yaml` for a YAML kubeconfig) names a module that the
bundle must contain, whether as a plain .pyc (per-pod bundles), inside the PYZ archive (installer), in
base_library.zip, as an extension module, or built into libpython. Imports under `if TYPE_CHECKING:`
never run and are skipped.
"""

from __future__ import annotations

import ast
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support.bundles import NAMES, ROOT, binary

PROJECT = ("cni", "validator", "daemonset", "frozen")
# The entry points and the bundles' run-time set-up they import (frozen.py).
ENTRY_POINTS = ROOT / "scripts" / "pyinstaller"
EXTENSION = ".cpython-311-x86_64-linux-gnu.so"
# Run by the build's Python (Debian's, whose libpython the bundles carry): its built-in modules and the
# modules in the bootloader's PYZ archive.
LIST_PYZ = """
import json, sys
from PyInstaller.archive.readers import CArchiveReader
pkg = CArchiveReader(sys.argv[1])
names = [m for n in pkg.toc if n.endswith(".pyz") for m in pkg.open_embedded_archive(n).toc]
print(json.dumps(names + list(sys.builtin_module_names)))
"""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in one file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            if base != "__future__":
                found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
                found.add(base)
    return found


def _source(module: str) -> Path | None:
    for base in (ROOT, ENTRY_POINTS):
        path = base.joinpath(*module.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def required_modules(name: str) -> dict[str, str]:
    """Outside modules reachable from a bundle's entry point: {module: the project file importing it}."""
    required: dict[str, str] = {}
    queue, seen = [ENTRY_POINTS / f"{name}.py"], set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            if module.split(".")[0] in PROJECT:
                source = _source(module)
                if source is not None:
                    queue.append(source)
            else:
                required.setdefault(module, str(path.relative_to(ROOT)))
    return required


def bundled_modules(bundle: Path) -> set[str]:
    internal = bundle / "_internal"
    names: set[str] = set()
    for path in internal.rglob("*"):
        relative = path.relative_to(internal)
        if path.suffix == ".pyc":
            parts = relative.with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        elif path.name.endswith(EXTENSION):
            parts = relative.parts
            if "lib-dynload" in parts:
                parts = parts[parts.index("lib-dynload") + 1:]
            names.add(".".join([*parts[:-1], parts[-1].removesuffix(EXTENSION)]))
    library = internal / "base_library.zip"
    if library.exists():
        for member in zipfile.ZipFile(library).namelist():
            if member.endswith(".pyc"):
                parts = member.removesuffix(".pyc").split("/")
                names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    pyz = subprocess.run([str(ROOT / ".build-venv" / "bin" / "python"), "-c", LIST_PYZ,
                          str(bundle / f"{bundle.name}.bootloader")], capture_output=True, text=True, check=True)
    names.update(json.loads(pyz.stdout))
    return names


def test_the_import_scan_sees_imports_inside_functions():
    assert required_modules("microgateway-cni")["yaml"] == "cni/kube.py"


@pytest.mark.parametrize("name", NAMES)
def test_every_imported_module_is_in_the_bundle(binaries, name):
    bundled = bundled_modules(binary(name).parent)
    missing = {module: importer for module, importer in required_modules(name).items()
               if module not in bundled and module.rsplit(".", 1)[0] not in bundled}
    assert not missing, f"{name} lacks modules its sources import: {missing}"
