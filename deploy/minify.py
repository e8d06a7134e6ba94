"""Smaller Lambda sources: docstrings and comments out, every line number kept.

``deployment.zip`` must stay under 100 KB (issue 14; a smaller package is a faster cold start).
The code is documented generously; the documentation is for readers of the repository, not for
Lambda.  :func:`strip_source` blanks docstrings and comments but keeps the file's line count and
each statement on its line, so a traceback from Lambda points at the same line in the repository.
"""

from __future__ import annotations

import ast
import io
import tokenize


def strip_source(source: str) -> str:
    """``source`` without docstrings and comments, line for line.

    A docstring becomes ``""`` on its first line and blank lines after; a comment is cut off its
    line.  Raises SyntaxError for source that does not parse (nothing is rewritten then).
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for first, last, col in sorted(_docstrings(tree), reverse=True):
        indent = lines[first - 1][:col]
        lines[first - 1] = f'{indent}""\n'
        for index in range(first, last):
            lines[index] = "\n"
    text = "".join(lines)
    return _strip_comments(text)


def _docstrings(tree: ast.AST) -> list[tuple[int, int, int]]:
    """(first line, last line, column) of every module, class and function docstring."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                expr = body[0]
                end = expr.end_lineno or expr.lineno
                # Only a docstring alone on its lines (``def f(): """x"""; y`` keeps it).
                if len(body) == 1 or body[1].lineno > end:
                    found.append((expr.lineno, end, expr.col_offset))
    return found


def _strip_comments(text: str) -> str:
    lines = text.splitlines(keepends=True)
    cuts: dict[int, int] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            cuts[token.start[0]] = token.start[1]
    for number, col in cuts.items():
        line = lines[number - 1]
        kept = line[:col].rstrip()
        lines[number - 1] = kept + "\n"
    return "".join(lines)
