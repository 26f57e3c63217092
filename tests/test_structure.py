"""The repository's shape, checked from its source text: no import cycles, one home for the torchvision fix, no
sys.path tricks, small app functions, and every `docs/methods.md §…` citation pointing at a real section."""

import ast
import re

import pytest
from conftest import REPO_ROOT

PACKAGES = ("models", "training", "inference", "studio_app")


def project_modules() -> dict[str, ast.Module]:
    """Dotted module name → parsed source, for the packages and app.py."""
    modules = {"app": ast.parse((REPO_ROOT / "app.py").read_text())}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = ast.parse(path.read_text())
    return modules


def imported_project_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """Every project module a module imports, at the top or inside a function (a lazy import still ties the knot)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def test_no_import_cycles():
    modules = project_modules()
    graph = {name: imported_project_modules(tree, set(modules)) - {name} for name, tree in modules.items()}
    # `training/__init__` imports `training.methods` to register the methods; nothing below imports the package
    # itself, so that one edge cannot close a cycle. Every other package-to-submodule edge counts.
    graph["training"] = graph["training"] - {"training.methods"}
    cycles, state = [], {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_torchvision_fix_is_applied_by_the_package_inits_only():
    importers = {name for name, tree in project_modules().items()
                 if "torchvision_compat" in imported_project_modules(tree, {"torchvision_compat"})
                 or any(isinstance(n, ast.Import) and any(a.name == "torchvision_compat" for a in n.names)
                        for n in ast.walk(tree))}
    assert importers == set(PACKAGES)


def test_no_sys_path_manipulation_outside_the_tests_conftest():
    sources = [p for p in REPO_ROOT.rglob("*.py") if ".venv" not in p.parts and p != REPO_ROOT / "tests" / "conftest.py"]
    offenders = [str(p.relative_to(REPO_ROOT)) for p in sources if re.search(r"sys\.path\.(insert|append)", p.read_text())]
    assert offenders == []


def function_lengths(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["app", "studio_app"])
def test_app_functions_stay_small(package):
    long = [(module, name, lines) for module, tree in project_modules().items()
            if module == package or module.startswith(package + ".")
            for name, lines in function_lengths(tree) if lines > 60]
    assert long == []


def test_every_methods_citation_names_a_section():
    headings = (REPO_ROOT / "docs" / "methods.md").read_text()
    sections = set(re.findall(r"^#+ §?(\d+(?:\.\d+)*)[ .]", headings, flags=re.M))
    sources = [p for p in list(REPO_ROOT.rglob("*.py")) + list(REPO_ROOT.rglob("*.yaml")) if ".venv" not in p.parts]
    cited = {(str(p.relative_to(REPO_ROOT)), number) for p in sources
             for number in re.findall(r"docs/methods\.md §(\d+(?:\.\d+)*)", p.read_text())}
    assert cited, "the code cites docs/methods.md"
    assert [c for c in cited if c[1] not in sections] == []


def test_code_and_docs_stand_alone():
    """No file of the repository refers readers to a folder outside it (tests may look for optional data)."""
    sources = [p for p in REPO_ROOT.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml") and ".venv" not in p.parts
               and "tests" not in p.relative_to(REPO_ROOT).parts[:1]]
    assert [str(p.relative_to(REPO_ROOT)) for p in sources if "../shared" in p.read_text()] == []
