"""The layering DESIGN.md promises, checked on the source: a module imports only from layers
below it (or its own), there are no import circles, and no source file grows past ~500 lines
without saying why at its top."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "relsafe"

# Top to bottom. A module may import its own layer and any layer below it.
LAYERS: list[set[str]] = [
    {"cli", "__main__", "commands"},
    {"serve"},  # the HTTP service: another front end over api, like the CLI
    {"api"},
    {"report"},
    {"gallery"},  # indexes and safe search over a gallery
    {"safety"},  # a model put to work: classifier, categories, redirect
    {"eval", "methods", "pretrain"},
    {"data", "engine"},
    {"policy"},
    {"models", "world", "geometry"},
    {"testing"},  # writes tiny random CLIP folders for tests with transformers alone
    {
        "config",
        "errors",
        "utils_io",
        "registry",
        "provenance",
        "checkpoints",
        "distributed",
        "validate",
        "outputs",
        "batching",
        "__init__",
    },
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}

MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@functools.cache
def _imports() -> dict[str, set[str]]:
    """Module -> every relsafe module it imports (at module level or inside functions)."""
    out: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        mod = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "relsafe":
                    found.update(f"relsafe.{a.name}" for a in node.names)
                elif node.module.startswith("relsafe."):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("relsafe."))
        out[mod] = found
    return out


def test_every_top_level_module_has_a_layer() -> None:
    tops = {_top(m) for m in _imports()}
    assert tops <= set(LAYER_OF), f"give these a layer in LAYERS: {sorted(tops - set(LAYER_OF))}"


def test_the_package_root_is_a_lazy_facade() -> None:
    """``relsafe/__init__.py`` may re-export the api, but only inside functions: importing
    ``relsafe`` (which every module does, for ``__version__``) must load nothing else."""
    tree = ast.parse((SRC / "__init__.py").read_text(encoding="utf-8"))
    top_level = [
        n
        for n in tree.body
        if isinstance(n, ast.Import | ast.ImportFrom)
        and (n.module if isinstance(n, ast.ImportFrom) else n.names[0].name or "").startswith(
            "relsafe"
        )
    ]
    assert not top_level


def test_no_module_imports_a_layer_above_it() -> None:
    bad = []
    for mod, targets in _imports().items():
        if mod == "relsafe":
            continue  # the lazy facade, checked above
        here = LAYER_OF[_top(mod)]
        for t in targets:
            there = LAYER_OF.get(_top(t))
            if there is None:
                continue
            if _top(t) == "__init__" and t == "relsafe.__version__":
                continue
            if there < here:
                bad.append(f"{mod} -> {t}")
    assert not bad, "imports from a higher layer:\n" + "\n".join(sorted(bad))


def test_eval_and_methods_do_not_import_each_other() -> None:
    bad = [
        f"{m} -> {t}"
        for m, ts in _imports().items()
        for t in ts
        if {_top(m), _top(t)} == {"eval", "methods"}
    ]
    assert not bad, "\n".join(bad)


def test_no_import_circles() -> None:
    imports = _imports()  # parse every file once, not once per module
    graph = {m: {t for t in ts if t in imports} for m, ts in imports.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                # a package __init__ importing its own submodules is not a circle between concerns
                cyc = stack[stack.index(nxt) :] + [nxt]
                if not _is_package_reexport(cyc):
                    cycles.append(cyc)
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_package_reexport(cycle: list[str]) -> bool:
    """``pkg`` (its ``__init__``) re-exporting ``pkg.sub`` while ``pkg.sub`` imports a sibling
    through ``pkg.other``: each edge stays inside one package and goes through its __init__."""
    pkgs = {c for c in cycle if any(o.startswith(c + ".") for o in cycle)}
    return bool(pkgs) and all(any(c == p or c.startswith(p + ".") for p in pkgs) for c in cycle)


def test_source_files_stay_small_or_say_why() -> None:
    too_big = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = text.count("\n")
        if n > MAX_LINES and "Longer than 500 lines because" not in text[:3000]:
            too_big.append(f"{path.relative_to(SRC)}: {n} lines")
    assert not too_big, (
        "files over 500 lines need a reason at the top ('Longer than 500 lines because ...'):\n"
        + "\n".join(too_big)
    )


@pytest.mark.parametrize("kind", ["methods", "suites", "backbones", "attacks"])
def test_registries_have_no_central_list(kind: str) -> None:
    """Built-ins are discovered by importing their home package, so adding one edits no list."""
    from relsafe import registry

    reg = {
        "methods": registry.METHODS,
        "suites": registry.SUITES,
        "backbones": registry.BACKBONES,
        "attacks": registry.ATTACKS,
    }[kind]
    assert reg.packages, f"the {kind} registry has no home package to discover entries in"
    assert len(reg.names()) > 0
