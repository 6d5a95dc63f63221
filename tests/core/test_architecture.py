"""The layout keeps its promises: one structure module, an acyclic core, no private names across modules."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[2] / "fedsim"


def _modules(folder):
    return sorted((PACKAGE / folder).rglob("*.py"))


def _module_name(path):
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


WRAPS_TF_DATA = {PACKAGE / "core" / "sequences.py", PACKAGE / "core" / "pipelines.py"}  # tf.data's own structures


@pytest.mark.parametrize("folder", ["core", "aws", "aggregators", "templates"])
def test_no_tf_nest_on_fedsim_values(folder):
    """tf.nest sorts dict keys; fedsim values are flattened in their type's order (`structure`)."""
    offenders = [f"{path.relative_to(PACKAGE)}:{number}" for path in _modules(folder) if path not in WRAPS_TF_DATA
                 for number, line in enumerate(path.read_text().splitlines(), 1) if "tf.nest" in line]
    assert not offenders


def _imports(path):
    """(module-level fedsim.core imports, imports inside functions) of one file."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "fedsim.core":
                names = [f"fedsim.core.{alias.name}" for alias in node.names]
            targets = [n for n in names if n.startswith("fedsim.core.")]
            if node.col_offset == 0:
                top.update(".".join(n.split(".")[:3]) for n in targets)
            elif targets:
                nested.append((node.lineno, targets))
    return top, nested


def test_the_core_has_no_import_cycle_and_no_function_level_imports():
    graph, nested = {}, {}
    for path in _modules("core"):
        name = _module_name(path)
        if name == "fedsim.core":
            continue
        top, inner = _imports(path)
        graph[name] = {m for m in top if m != name and m in {_module_name(p) for p in _modules("core")}}
        if inner:
            nested[name] = inner
    assert not nested, f"function-level imports inside the core: {nested}"
    visiting, done, order = set(), set(), []

    def visit(module, chain):
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join(chain + [module])}"
        visiting.add(module)
        for dependency in sorted(graph.get(module, ())):
            visit(dependency, chain + [module])
        visiting.discard(module)
        done.add(module)
        order.append(module)

    for module in sorted(graph):
        visit(module, [])
    assert order.index("fedsim.core.types") < order.index("fedsim.core.evaluator") < order.index("fedsim.core.local_context")


@pytest.mark.parametrize("folder", ["core", "aws"])
def test_no_private_names_cross_modules(folder):
    offenders = []
    for path in _modules(folder):
        tree = ast.parse(path.read_text())
        module_aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedsim"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        offenders.append(f"{path.name}:{node.lineno} imports {alias.name}")
                    if node.module in ("fedsim.core", "fedsim.aws", "fedsim"):
                        module_aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                module_aliases.update(a.asname or a.name for a in node.names if a.name.startswith("fedsim"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offenders
