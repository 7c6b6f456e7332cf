"""Lines of the library (`dnallm/*.py dnallm/*/*.py`, what `wc -l` counts), split into code, docstrings/comments and
blank lines by Python's tokenizer (issue 14 asks that the library get shorter).

    python benchmarks/library_size.py dnallm [OTHER_TREE/dnallm ...]
"""

from __future__ import annotations

import io
import sys
import tokenize
from pathlib import Path

LAYOUT = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
STATEMENT_START = {tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT}


def line_kinds(source: str) -> dict[str, int]:
    """{code, doc_or_comment, blank} line counts of one file. A string that starts a statement is a docstring; a line
    holding any other token is code, even with a trailing comment."""
    code: set[int] = set()
    prose: set[int] = set()
    previous = None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        lines = range(token.start[0], token.end[0] + 1)
        if token.type == tokenize.COMMENT:
            prose.update(lines)
        elif token.type == tokenize.STRING and (previous is None or previous.type in STATEMENT_START):
            prose.update(lines)
        elif token.type not in LAYOUT:
            code.update(lines)
        if token.type not in (tokenize.COMMENT, tokenize.NL):
            previous = token
    counts = {"code": 0, "doc_or_comment": 0, "blank": 0}
    for number, line in enumerate(source.splitlines(), 1):
        if number in code or (number not in prose and line.strip()):
            counts["code"] += 1
        elif number in prose:
            counts["doc_or_comment"] += 1
        else:
            counts["blank"] += 1
    return counts


def library_size(root: str | Path) -> dict[str, int]:
    root = Path(root)
    total = {"code": 0, "doc_or_comment": 0, "blank": 0}
    for path in sorted([*root.glob("*.py"), *root.glob("*/*.py")]):
        for kind, n in line_kinds(path.read_text()).items():
            total[kind] += n
    return {**total, "total": sum(total.values())}


if __name__ == "__main__":
    for root in sys.argv[1:]:
        print(root, library_size(root))
