"""The house's layer rules, read from the import statements (``ast``) of every file in src/ and benchmarks/.

Operators know nothing of tasks, models compose operators, data / training / experiments sit on top, the ground
floor (``utils``) stands on nothing, and nothing imports the CLI or the tests. Imports inside functions count too:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = "favit_probsparse"
SRC = REPO / "src" / PKG

OPERATORS = ("attention", "posenc", "layers")
# (what, importer prefixes, forbidden target prefixes); prefixes are dotted names below favit_probsparse
RULES = [
    ("operators import no models, data, training or experiments", OPERATORS,
     ("models", "data", "training", "experiments")),
    ("models import no data, training or experiments", ("models",), ("data", "training", "experiments")),
    ("nothing imports the CLI", ("",), ("cli",)),
    ("experiments import no data", ("experiments",), ("data",)),
    ("the ground floor (utils) imports nothing else of the package", ("utils",),
     tuple(p.stem for p in SRC.iterdir() if p.stem not in ("utils", "__init__", "__pycache__"))),
    ("the packaged benchmarks import no experiments", ("benchmarks",), ("experiments",)),
    ("the config module knows classes only by the names configs give", ("config",),
     ("models", "data", "training", "experiments", "analysis")),
]  # fmt: skip


def _module_name(path: Path) -> str:
    """Dotted name below the package: ``experiments.runner``; ``""`` for the package's ``__init__``."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str | None) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved against ``module``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert module is not None, f"{path}: relative import outside the package"
                base = f"{PKG}.{module}".rstrip(".").split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import sub` imports pkg.sub
    return out


def _inside(name: str, prefix: str) -> bool:
    full = f"{PKG}.{prefix}" if prefix else PKG
    return name == full or name.startswith(full + ".")


def _src_files() -> list[tuple[str, Path]]:
    return [(_module_name(p), p) for p in sorted(SRC.rglob("*.py"))]


def test_the_parser_sees_relative_and_lazy_imports(tmp_path):
    """The rules would be empty words if the parser missed ``from ..x import y`` or an import in a function."""
    f = tmp_path / "m.py"
    f.write_text("from ..models import favit\ndef g():\n    from favit_probsparse.data.vision import X\n")
    got = _imports(f, "attention.m")
    assert f"{PKG}.models.favit" in got and f"{PKG}.data.vision.X" in got


@pytest.mark.parametrize(("what", "importers", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layer_rule(what, importers, forbidden):
    files = _src_files()
    assert len(files) > 30, "src/ not found"
    broken = []
    for module, path in files:
        if not any(module == i or module.startswith(i + ".") or i == "" for i in importers):
            continue
        for name in sorted(_imports(path, module)):
            if any(_inside(name, f) for f in forbidden):
                broken.append(f"{path.relative_to(REPO)} imports {name}")
    assert not broken, f"{what}:\n" + "\n".join(broken)


def test_nothing_in_src_or_benchmarks_imports_the_tests():
    files = _src_files() + [(None, p) for p in sorted((REPO / "benchmarks").glob("*.py"))]
    test_modules = {p.stem for p in (REPO / "tests").glob("*.py")} | {"tests"}
    broken = [
        f"{p.relative_to(REPO)} imports {name}"
        for module, p in files
        for name in _imports(p, module)
        if name.split(".")[0] in test_modules
    ]
    assert not broken, "\n".join(broken)


def test_the_benchmark_scripts_keep_the_rules_of_the_package():
    """benchmarks/ scripts sit on top of everything, but they import no CLI."""
    broken = [
        f"{p.relative_to(REPO)} imports {name}"
        for p in sorted((REPO / "benchmarks").glob("*.py"))
        for name in _imports(p, None)
        if _inside(name, "cli")
    ]
    assert not broken, "\n".join(broken)
