"""The source tree's shape: layering (no module imports one above it), no import cycles, no
source file over 400 lines. The layers are the README's Layout section."""
import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "targetprop"

#: bottom to top; a module may import its own layer and the ones below
LAYERS = [
    ("base", ["targetprop._validation", "targetprop.argtypes", "targetprop.activations",
              "targetprop.init", "targetprop.fpmode", "targetprop.inverse", "targetprop.kernels",
              "targetprop.stability"]),
    ("layer", ["targetprop", "targetprop.hyperparams", "targetprop.recursion", "targetprop.rules",
               "targetprop.engine", "targetprop.cells", "targetprop.learned", "targetprop.function",
               "targetprop.packing", "targetprop.inputs", "targetprop.recurrent", "targetprop.rnn",
               "targetprop.lstm_layer", "targetprop.diagnose"]),
    ("tasks", ["targetprop.tasks"]),
    ("training", ["targetprop.training"]),
    ("experiments", ["targetprop.experiments", "targetprop.bench"]),
    ("command line", ["targetprop.cli", "targetprop.__main__"]),
]


def module_name(path: pathlib.Path) -> str:
    parts = ["targetprop", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of the README's Layout"
    return best[0]


def imports(path: pathlib.Path, top_level_only: bool) -> set[str]:
    """The targetprop modules ``path`` imports (``from . import x`` names x's module when it is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("targetprop")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("targetprop"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                as_file = SRC.joinpath(*sub.split(".")[1:])
                found.add(sub if as_file.with_suffix(".py").is_file() or as_file.is_dir() else mod)
    return found


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_one_above_its_layer(path):
    here = module_name(path)
    above = [m for m in imports(path, top_level_only=False) if layer_of(m) > layer_of(here)]
    assert not above, f"{here} ({LAYERS[layer_of(here)][0]}) imports {above} from a layer above"


def test_no_import_cycles():
    """Imports inside functions count: a cycle hidden in a function is still a cycle."""
    graph = {module_name(p): {m for m in imports(p, top_level_only=False) if m != "targetprop"} for p in SOURCES}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in graph.get(node, ()):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        visit(node, [])


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SOURCES
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"source files over 400 lines: {long}"
