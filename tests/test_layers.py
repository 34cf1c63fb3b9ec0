"""The import graph of src/sdstudio: no circles, and no import upwards (../shared/STYLE.md layer order).

Every import counts, also those inside functions: a lazy upward import is still a layer break.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "sdstudio"

# Lower number = lower layer; a module may import its own layer or below. Top-level apps share a rank.
RANKS = {
    "config": 0, "errors": 0, "devices": 0, "fields": 0, "infotext": 0, "assets": 0,
    "checkpoints": 1,  # file I/O only: what is in a file is a family's business
    "prompts": 2,  # grammar and chunked CLIP encoding, handed the model's encoders
    "families": 3,  # one folder per model family (sdstudio/families/<name>/)
    "backends": 4, "sampling": 4,
    "upscale": 4,  # model upscalers (spandrel): may import checkpoints and errors; pipelines use it
    "models": 5,  # the loaded model and the loader (read -> build -> place -> attach a backend)
    "networks": 6,
    "pipelines": 7,
    "runtime": 8,
    "api": 9,
    "web": 10,
    "lab": 11, "training": 11, "cli": 11,
}  # fmt: skip
FORBIDDEN = {("training", "api"), ("training", "lab")}  # top-level apps that must stay apart


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: modules of sdstudio it imports}, relative imports resolved."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in files and t != mod and t != "sdstudio" and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_rank():
    layers = {_layer(m) for m in import_graph()} - {""}
    assert layers <= set(RANKS), f"give these packages a layer in RANKS: {sorted(layers - set(RANKS))}"


def test_no_upward_imports():
    bad = []
    for mod, targets in import_graph().items():
        src = _layer(mod)
        for t in targets:
            dst = _layer(t)
            if src and dst and (RANKS[dst] > RANKS[src] or (src, dst) in FORBIDDEN):
                bad.append(f"{mod} -> {t}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_package_circles():
    """Package level too: no ``a -> b -> a`` between sdstudio's packages (models <-> checkpoints was one)."""
    packages: dict[str, set[str]] = {}
    for mod, targets in import_graph().items():
        src = _layer(mod)
        packages.setdefault(src, set()).update(_layer(t) for t in targets if _layer(t) not in ("", src))
    circles = [f"{a} <-> {b}" for a in packages for b in packages.get(a, ()) if a in packages.get(b, ())]
    assert not circles, "package circles: " + ", ".join(sorted(set(circles)))
