"""Library layout rules: no import cycles between dnallm's modules (not even through function-level imports),
no test hooks in library code, and the entry points never import each other."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str) -> set[str]:
    """Modules of `package` imported anywhere in `path` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_in_the_library():
    modules = {_module_name(p): p for p in (ROOT / "dnallm").rglob("*.py")}
    graph = {m: {i for i in _imports(p, "dnallm") if i in modules and i != m and not m.startswith(i + ".")}
             for m, p in modules.items()}
    # packages import their submodules (a registry); only module-to-module edges can form a cycle of concern
    graph = {m: {i for i in deps if modules[i].name != "__init__.py"} for m, deps in graph.items()}
    cycles = []

    def visit(node, stack):
        for nxt in graph[node]:
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_test_hooks_in_library_code():
    hooks = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "dnallm").rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"DNALLM_TEST|_HOOK\b", line)]
    assert not hooks, hooks


def test_entry_points_never_import_each_other():
    for folder in ("train", "eval", "app"):
        for p in (ROOT / folder).glob("*.py"):
            others = {f for f in ("train", "eval", "app") if f != folder}
            for other in others:
                assert not _imports(p, other), f"{p.relative_to(ROOT)} imports {other}"
