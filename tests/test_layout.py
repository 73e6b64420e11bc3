"""Package layout (issue 25): files a reader can hold in their head, and no import circles.

Both read the source with `ast` (nothing is imported): every `import` / `from ... import` of a module of the
package counts, at the top of a file and inside functions alike, so a circle cannot hide in a function body.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastretrain"
MAX_LINES = 500
ENGINE_MAX_LINES = 420  # issue 25: the engine keeps the loop; what is not the loop lives in modules of its own
# issue 25: benchmarks/run.py (1,335 lines) became its command line plus one module per concern
SUITE_RUNNER = ("run", "suites", "verdicts", "findings", "report", "pages")
SUITE_RUNNER_MAX_LINES = 400


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from the source (top-level and function-level imports)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from . import x` names the submodule x; `from .m import f` names module m
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            out |= {t for t in targets if t in files and t != name}
        graph[name] = out
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each one holds an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_file_of_the_package_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_suite_runner_files_stay_small():
    bench = PACKAGE.parent / "benchmarks"
    long = {name: n for name in SUITE_RUNNER
            if (n := len((bench / f"{name}.py").read_text(encoding="utf-8").splitlines())) > SUITE_RUNNER_MAX_LINES}
    assert not long, f"over {SUITE_RUNNER_MAX_LINES} lines: {long}"


def test_the_engine_keeps_only_the_loop():
    n = len((PACKAGE / "engine.py").read_text(encoding="utf-8").splitlines())
    assert n <= ENGINE_MAX_LINES, f"engine.py has {n} lines, over {ENGINE_MAX_LINES}"


def test_the_package_has_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles: {[sorted(c) for c in found]}"


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [{"a", "b"}, {"c", "d"}]),
])  # fmt: skip
def test_circles_finds_every_cycle(graph, expected):
    assert sorted(map(sorted, circles(graph))) == sorted(map(sorted, expected))


def test_the_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "fastretrain"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import fastretrain.a\nfrom .. import b\n")
    graph = import_graph(pkg)
    assert graph["fastretrain.a"] == {"fastretrain.b"}
    assert graph["fastretrain.b"] == {"fastretrain.sub.c"}
    assert graph["fastretrain.sub.c"] == {"fastretrain.a", "fastretrain.b"}
    assert circles(graph) == [{"fastretrain.a", "fastretrain.b", "fastretrain.sub.c"}]
