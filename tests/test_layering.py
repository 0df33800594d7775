"""The house rule: every floor imports only the floors below it.

Every module under ``src/optinc_jax`` is parsed (not imported) and every import is read:
absolute, relative, and those inside functions. The rule, from the bottom up:

- ``validation`` (ground floor) and ``paper`` import nothing of the package;
- ``photonics`` imports only itself and ``validation``;
- ``scenarios`` at most ``paper`` and ``validation``;
- ``encoding`` at most ``photonics``, ``scenarios``, ``paper``, ``validation`` and itself;
- ``learning`` at most those and ``encoding`` and itself;
- ``network`` anything but the CLI;
- nothing in ``src`` imports ``experiments``, ``benchmarks`` or ``tests``.
"""

import ast
from pathlib import Path

import pytest

import optinc_jax

PACKAGE_ROOT = Path(optinc_jax.__file__).parent
FOREIGN = {"experiments", "benchmarks", "tests", "conftest"}

GROUND = {"validation"}
ALLOWED: dict[str, set[str]] = {
    "validation": set(),
    "paper": set(),
    "photonics": {"photonics"} | GROUND,
    "scenarios": {"paper"} | GROUND,
    "encoding": {"encoding", "photonics", "scenarios", "paper"} | GROUND,
    "learning": {"learning", "encoding", "photonics", "scenarios", "paper"} | GROUND,
    "network": {"network", "learning", "encoding", "photonics", "scenarios", "paper"} | GROUND,
    "cli": {"cli", "network", "learning", "encoding", "photonics", "scenarios", "paper"} | GROUND,
    "__init__": set(),  # the lazy API names modules by string only
}


def floor_of(module: str) -> str:
    """``optinc_jax.learning.step`` -> ``learning``; ``optinc_jax`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Absolute names of every module imported anywhere in ``source`` (with line numbers).

    ``from optinc_jax import b`` yields ``optinc_jax.b`` (``b`` is a module of the top
    level); ``from a.c import b`` yields ``a.c``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin == "optinc_jax":
                found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, origin))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the text of ``module``) that breaks the house rule."""
    floor = floor_of(module)
    allowed = ALLOWED[floor]
    problems = []
    for line, name in imported_modules(source, module, is_package):
        top = name.split(".")[0]
        if top in FOREIGN:
            problems.append(f"{module}:{line} imports {name} (src never imports {top})")
        elif top == "optinc_jax" and name != "optinc_jax":
            target = floor_of(name)
            if target not in allowed and target != floor:
                problems.append(f"{module}:{line} ({floor}) imports {name} ({target})")
        elif name == "optinc_jax" and floor != "__init__":
            problems.append(f"{module}:{line} imports the whole package (use a floor's module)")
    return problems


def package_modules() -> list[tuple[str, Path, bool]]:
    modules = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
        parts = list(relative.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules.append((".".join(parts), path, is_package))
    return modules


def test_every_module_belongs_to_a_known_floor():
    floors = {floor_of(module) for module, _, _ in package_modules()}
    assert floors <= set(ALLOWED), floors - set(ALLOWED)
    assert {"photonics", "encoding", "learning", "network"} <= floors


@pytest.mark.parametrize(("module", "path", "is_package"), package_modules(), ids=lambda v: str(v))
def test_no_floor_imports_a_floor_above_it(module, path, is_package):
    assert violations(path.read_text(), module, is_package) == []


@pytest.mark.parametrize(
    ("module", "source", "is_package"),
    [
        ("optinc_jax.photonics.mesh", "from optinc_jax.encoding import pam4", False),
        ("optinc_jax.photonics.mesh", "def f():\n    import optinc_jax.learning.onn", False),
        ("optinc_jax.photonics.mesh", "from ..learning import onn", False),
        ("optinc_jax.photonics", "from ..scenarios import Scenario", True),
        ("optinc_jax.encoding.units", "from optinc_jax.learning.step import train_epoch", False),
        ("optinc_jax.learning.step", "from optinc_jax.network import collective", False),
        ("optinc_jax.learning.step", "from optinc_jax import cli", False),
        ("optinc_jax.network.cascade", "import optinc_jax.cli", False),
        ("optinc_jax.scenarios", "from optinc_jax.encoding.pam4 import num_symbols", False),
        ("optinc_jax.paper", "from optinc_jax import scenarios", False),
        ("optinc_jax.paper", "from optinc_jax.validation import require_int", False),
        ("optinc_jax.cli", "import experiments.common", False),
        ("optinc_jax.learning.trainer", "from benchmarks import bench_train", False),
        ("optinc_jax.network.ring", "import tests.test_train", False),
        ("optinc_jax.encoding.pam4", "import optinc_jax", False),
    ],
)
def test_the_checker_catches_upward_imports(module, source, is_package):
    assert violations(source, module, is_package), (module, source)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("optinc_jax.photonics.decompose", "from .mesh import ClementsPhases"),
        ("optinc_jax.photonics.area", "from optinc_jax.validation import require_int"),
        ("optinc_jax.encoding.dataset", "from optinc_jax.photonics.mzi import mzi_transfer"),
        ("optinc_jax.learning.step", "from ..encoding.dataset import Dataset"),
        ("optinc_jax.network.cascade", "from optinc_jax.learning import trainer"),
        ("optinc_jax.scenarios", "from optinc_jax import paper"),
        ("optinc_jax.cli", "from optinc_jax.network import collective"),
    ],
)
def test_the_checker_allows_downward_imports(module, source):
    assert violations(source, module) == []
