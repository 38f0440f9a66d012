"""No import circle among nnformer_fast's modules.

The graph is read from the source with ``ast`` (the oracle does not import anything): an edge
for every ``import`` / ``from ... import`` of a package module, at module level or inside a
function (a deferred import only hides a circle until the first call takes it).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnformer_fast"


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict:
    """Module name -> the package's modules it imports (a submodule where one is named, else its package)."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]) if node.level \
                    else node.module or ""
                base = base.rstrip(".")
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_circle(graph: dict) -> list:
    """One import circle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = "done"
        stack.pop()
        return []
    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return []


def test_finds_a_planted_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    assert find_circle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import helpers\n")
    assert find_circle(import_graph(pkg)) == []


def test_no_import_circle_in_nnformer_fast():
    graph = import_graph(PACKAGE)
    assert "nnformer_fast.cli" in graph and "nnformer_fast._cli_args" in graph["nnformer_fast.demo"]
    circle = find_circle(graph)
    assert not circle, "import circle: " + " -> ".join(circle)
