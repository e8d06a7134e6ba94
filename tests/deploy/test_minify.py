"""deploy/minify.py: the packaged sources lose docstrings and comments, never a line or a
statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deploy.minify import strip_source

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([ROOT / "app.py", *(ROOT / "chalicelib").rglob("*.py")])


def _without_docstrings(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body[0] = ast.Expr(ast.Constant(""))
    return ast.dump(tree, include_attributes=False)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_same_program_on_the_same_lines(path: Path) -> None:
    source = path.read_text()
    stripped = strip_source(source)
    assert stripped.count("\n") == source.count("\n")  # tracebacks point at the same lines
    assert _without_docstrings(ast.parse(stripped)) == _without_docstrings(ast.parse(source))
    # Every statement starts on the line it started on.
    before = [n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.stmt)]
    after = [n.lineno for n in ast.walk(ast.parse(stripped)) if isinstance(n, ast.stmt)]
    assert before == after
    assert "#" not in "".join(line.split('"')[0].split("'")[0]
                              for line in stripped.splitlines())


def test_it_removes_what_it_says() -> None:
    source = ('"""Module doc."""\nimport os  # why\n\n\ndef f():\n    """Doc\n    more."""\n'
              '    return "# not a comment"  # a comment\n')
    assert strip_source(source) == (
        '""\nimport os\n\n\ndef f():\n    ""\n\n    return "# not a comment"\n')
