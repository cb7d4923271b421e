"""House rules of the test tree (issue 19): shared helpers live in tests/helpers/ or tests/conftest.py."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _test_module_imports(path: Path, root: Path = TESTS.parent) -> list[str]:
    """``file:line imports tests.test_x`` for every import of a test module in ``path``, function-local ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "tests":
            modules = [f"tests.{alias.name}" for alias in node.names]  # from tests import test_x
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} imports {m}" for m in modules
                  if m.startswith("tests.test_")]  # fmt: skip
    return found


def test_no_test_module_imports_another() -> None:
    bad = [line for path in sorted(TESTS.rglob("*.py")) for line in _test_module_imports(path)]
    assert not bad, "; ".join(bad) + ". Move the helper to tests/helpers/ (a fixture to tests/conftest.py)."


def test_the_rule_sees_function_local_imports(tmp_path: Path) -> None:
    module = tmp_path / "tests" / "helpers" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from tests.test_train import x\n    from tests import test_embed, helpers\n")
    assert _test_module_imports(module, tmp_path) == [
        "tests/helpers/probe.py:2 imports tests.test_train",
        "tests/helpers/probe.py:3 imports tests.test_embed",
    ]
