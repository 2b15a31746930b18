"""The test tree's own layout: shared code lives in tests/support, so no module under tests/ imports
a test package (tests.unit, tests.integration, tests.e2e) - a test module importing another runs its
fixtures and collection side effects twice and hides the shared code from whoever looks for it."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SHARED = "tests.support"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, package: str) -> list[tuple[int, str]]:
    """Every module an import statement names, relative imports resolved against `package`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from tests import integration` names the module tests.integration
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names] or [(node.lineno, base)]
    return found


def forbidden_imports(root: Path) -> list[str]:
    """`path:line imports module` for every import under root of a tests.* module outside tests.support."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for line, module in imported(ast.parse(path.read_text(), str(path)), package):
            parts = module.split(".")
            if parts[0] != "tests" or len(parts) < 2:
                continue
            if ".".join(parts[:2]) != SHARED:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return problems


def test_no_module_under_tests_imports_a_test_package() -> None:
    assert forbidden_imports(TESTS) == []


def test_the_check_sees_absolute_relative_and_package_imports(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    for package in ("support", "integration", "e2e"):
        (tests / package).mkdir(parents=True)
        (tests / package / "__init__.py").write_text("")
    (tests / "__init__.py").write_text("")
    (tests / "support" / "pods.py").write_text("from tests.support.node import Node\nfrom . import node\n")
    (tests / "integration" / "test_a.py").write_text("from tests.support import pods\nimport os\n")
    (tests / "integration" / "test_b.py").write_text("from tests.integration.test_a import x\nfrom . import test_a\n")
    (tests / "e2e" / "test_c.py").write_text("import tests.integration.test_a\nfrom tests import integration\n"
                                             "from ..integration import test_b\n")
    assert forbidden_imports(tests) == [
        "tests/e2e/test_c.py:1 imports tests.integration.test_a",
        "tests/e2e/test_c.py:2 imports tests.integration",
        "tests/e2e/test_c.py:3 imports tests.integration.test_b",
        "tests/integration/test_b.py:1 imports tests.integration.test_a.x",
        "tests/integration/test_b.py:2 imports tests.integration.test_a",
    ]
