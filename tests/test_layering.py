"""The house rule: every floor imports only the floors below it.

The rule lives in ``pyproject.toml`` (``[tool.optinc.layers]``: what each part of the
package, a subpackage or a top-level module, may import besides itself). Every module
under ``src/optinc_jax`` is parsed (not imported) and every import is read: absolute,
relative, and those inside functions. Nothing in ``src`` imports ``experiments``,
``benchmarks`` or ``tests``.
"""

import ast
import itertools
import tomllib
from pathlib import Path

import pytest

import optinc_jax

PACKAGE_ROOT = Path(optinc_jax.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FOREIGN = ("experiments", "benchmarks", "tests")

with PYPROJECT.open("rb") as stream:
    ALLOWED: dict[str, set[str]] = {
        part: set(below) for part, below in tomllib.load(stream)["tool"]["optinc"]["layers"].items()
    }


def part_of(module: str) -> str:
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
    part = part_of(module)
    allowed = ALLOWED[part] | {part}
    problems = []
    for line, name in imported_modules(source, module, is_package):
        top = name.split(".")[0]
        if top in FOREIGN:
            problems.append(f"{module}:{line} imports {name} (src never imports {top})")
        elif name == "optinc_jax":
            if part != "__init__":
                problems.append(f"{module}:{line} imports the whole package (use a module)")
        elif top == "optinc_jax" and part_of(name) not in allowed:
            problems.append(f"{module}:{line} ({part}) imports {name} ({part_of(name)})")
    return problems


def package_modules() -> list[tuple[str, Path, bool]]:
    modules = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules.append((".".join(parts), path, is_package))
    return modules


def test_every_module_belongs_to_a_part_with_a_rule():
    parts = {part_of(module) for module, _, _ in package_modules()}
    assert parts == set(ALLOWED), parts ^ set(ALLOWED)


def test_the_rule_is_a_strict_order_of_floors():
    # Nothing may import something that may import it back (no cycles), and every part
    # may import all that the parts below it may (floors, not a web).
    for part, below in ALLOWED.items():
        assert below <= set(ALLOWED), (part, below - set(ALLOWED))
        assert part not in below, part
        for lower in below:
            assert part not in ALLOWED[lower], (part, lower)
            assert ALLOWED[lower] <= below, (part, lower, ALLOWED[lower] - below)


@pytest.mark.parametrize(("module", "path", "is_package"), package_modules(), ids=lambda v: str(v))
def test_no_floor_imports_a_floor_above_it(module, path, is_package):
    assert violations(path.read_text(), module, is_package) == []


def _module_in(part: str) -> tuple[str, bool]:
    """A module name inside ``part`` (a subpackage's module, or the top-level module)."""
    return ("optinc_jax", True) if part == "__init__" else (f"optinc_jax.{part}.m", False)


def _forms(target: str, level: int) -> list[str]:
    """Ways to import the part ``target``: absolute, relative, inside a function."""
    dots = "." * level
    return [
        f"from optinc_jax.{target} import name",
        f"import optinc_jax.{target}",
        f"from optinc_jax import {target}",
        f"from {dots}{target} import name",
        f"def f():\n    from optinc_jax.{target} import name\n    return name",
    ]


PAIRS = [
    (part, target)
    for part, target in itertools.permutations(ALLOWED, 2)
    if "__init__" not in (part, target)
]


@pytest.mark.parametrize(("part", "target"), PAIRS)
def test_the_checker_judges_every_pair_of_parts_in_every_import_form(part, target):
    module, is_package = _module_in(part)
    # From optinc_jax.<part>.m, one level up is optinc_jax.<part> and two is optinc_jax.
    level = 1 if is_package else 2
    for source in _forms(target, level):
        flagged = bool(violations(source, module, is_package))
        assert flagged == (target not in ALLOWED[part]), (part, target, source)


@pytest.mark.parametrize("part", [p for p in ALLOWED if p != "__init__"])
def test_the_checker_flags_foreign_and_whole_package_imports(part):
    module, is_package = _module_in(part)
    for source in [
        "import experiments.tables",
        "from benchmarks import bench_train",
        "def f():\n    import tests.test_train",
        "import optinc_jax",
    ]:
        assert violations(source, module, is_package), (part, source)
    assert violations(f"from optinc_jax.{part} import name", module, is_package) == []
