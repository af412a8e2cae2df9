"""The import graph of fastjax: no module imports, directly or through others, a module
that imports it back, and the stages never read the config module (configs are the
interface: a stage takes plain values; STYLE.md "one direction of flow").

Every `import` / `from ... import` statement counts, those inside functions included
(a lazy import is still a dependency). A package's own `__init__` is not an implicit
edge of its submodules: Python runs it first, but it is what the submodule belongs to,
not what it uses."""

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fastjax"
# The pipeline's stages: they take plain values, never the experiment's ConfigDict.
STAGES = ("federate", "label", "encode", "data", "partition", "active")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fastjax modules `name` imports (resolved: `from a import b` is a.b when that
    is a module, else a)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this module
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    out.add(sub)
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _reachable(graph, start) -> dict[str, str]:
    """Every module `start` imports transitively -> the module that imports it (a path)."""
    seen, todo = {}, [start]
    while todo:
        m = todo.pop()
        for d in graph[m]:
            if d not in seen:
                seen[d] = m
                todo.append(d)
    return seen


def _path(parents, start, end) -> list[str]:
    chain = [end]
    while chain[-1] != start:
        chain.append(parents[chain[-1]])
    return chain[::-1]


def test_the_graph_sees_lazy_and_relative_imports():
    g = _graph()
    assert "fastjax.federate.engine" in g["fastjax.config"] or "fastjax.federate" in g["fastjax.config"]
    assert "fastjax.encode.core" in g["fastjax.encode.embed"]  # `from fastjax.encode import core`


def test_no_module_imports_one_that_imports_it_back():
    g = _graph()
    cycles = []
    for m in sorted(g):
        parents = _reachable(g, m)
        if m in parents:
            cycles.append(" -> ".join(_path(parents, m, parents[m]) + [m]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_stages_never_import_the_config_module():
    g = _graph()
    bad = []
    for m in sorted(g):
        stage = m.split(".")[1] if m.count(".") >= 1 else ""
        # A stage's command line (`python -m fastjax.label`) is an entry point, as main is.
        if stage not in STAGES or m.endswith(".__main__"):
            continue
        parents = _reachable(g, m)
        if "fastjax.config" in parents:
            bad.append(" -> ".join(_path(parents, m, "fastjax.config")))
    assert not bad, "stages that import fastjax.config:\n" + "\n".join(bad)
