"""The drawing of the package's imports, made from the code at every docs build (never drawn by hand).

    make docs                                       # docs/development.md gets the drawing
    python docs/hooks/import_graph.py               # the Mermaid source alone

Each layer of ../shared/DESIGN.md is a box; an arrow A --> B means some module of A imports some module of B,
labelled with how many direct imports cross it. Arrows only ever point down the layers (entry points ->
flows -> tasks -> pipeline -> core); import-linter's contracts (pyproject.toml) fail `make lint` otherwise.
`layer_edges` is pure (an import graph in, edges out) and tested.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

MARKER = "<!-- import-graph -->"
PAGE = "development.md"
PACKAGES = ("smoltune", "flows", "tasks", "data_checks")
# Top to bottom. A module belongs to the first layer one of whose prefixes it starts with; the rest is core.
LAYERS = {
    "entry points": ("smoltune.cli", "smoltune.serve"),
    "flows": ("flows",),
    "tasks": ("tasks",),
    "pipeline": ("smoltune.pipeline",),
}
CORE = "core library"


def layer_of(module: str) -> str | None:
    """The layer of a project module (None for the bare `smoltune` package, whose __init__ imports nothing)."""
    if module == "smoltune":
        return None
    for layer, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return CORE


def layer_edges(imports: list[tuple[str, str]]) -> Counter:
    """{(importing layer, imported layer): direct imports} over (importer, imported) module pairs."""
    edges: Counter = Counter()
    for importer, imported in imports:
        a, b = layer_of(importer), layer_of(imported)
        if a and b and a != b:
            edges[(a, b)] += 1
    return edges


def project_imports() -> list[tuple[str, str]]:
    """Every direct import between the project's own modules, as grimp (import-linter's graph) reads them."""
    import grimp

    graph = grimp.build_graph(*PACKAGES)
    return [
        (importer, imported)
        for importer in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(importer))
        if imported.split(".")[0] in PACKAGES
    ]


def mermaid(edges: Counter) -> str:
    ids = {name: f"L{i}" for i, name in enumerate([*LAYERS, CORE])}
    lines = ["```mermaid", "graph TD"]
    lines += [f'    {ids[name]}["{name}"]' for name in ids]
    lines += [
        f"    {ids[a]} -->|{n}| {ids[b]}" for (a, b), n in sorted(edges.items(), key=lambda e: list(ids).index(e[0][0]))
    ]
    return "\n".join([*lines, "```"])


def edge_list(edges: Counter) -> str:
    """The same arrows as a list, for a reader whose viewer does not draw Mermaid."""
    return "\n".join(f"- {a} → {b}: {n} imports" for (a, b), n in sorted(edges.items()))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} has lost its marker {MARKER!r}: the import drawing has nowhere to go")
    edges = layer_edges(project_imports())
    return markdown.replace(MARKER, mermaid(edges) + "\n\n" + edge_list(edges))


if __name__ == "__main__":
    print(mermaid(layer_edges(project_imports())))
