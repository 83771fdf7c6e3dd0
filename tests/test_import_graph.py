"""The package's layers import only downward (see ARCHITECTURE.md), checked on the source itself.

Every ``import``/``from ... import`` of ``transformer_grow`` modules, at module level or inside a
function, must go to a layer at or below the importing module's layer. A new sub-package must be
given its place here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "transformer_grow"

# Lower number = lower layer. Same-layer imports are allowed only within one package, except for
# the foundation modules (layer 0), which may import each other.
LAYERS = {
    "errors": 0, "io": 0, "device": 0, "optim_state": 0, "counts": 0,
    "model": 1, "data": 1, "scaling": 1,
    "distributed": 2,
    "operators": 3,
    "hf": 4,
    "train": 5,
    "plans": 6,
    "run": 7,
    "compare": 8, "lab": 8,
    "ladder": 9,
    "cli": 10,
}
PACKAGE_INIT = "__init__"  # the top-level package: lazy re-exports only, checked separately


def _unit(module: str) -> str:
    """``transformer_grow.operators.width`` -> ``grow``; ``transformer_grow`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE_INIT


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every transformer_grow import in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("transformer_grow")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "transformer_grow":  # from transformer_grow import operators
                found += [(node.lineno, f"transformer_grow.{a.name}") for a in node.names]
            elif node.module.startswith("transformer_grow."):
                found.append((node.lineno, node.module))
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units == set(LAYERS), f"give these a layer in LAYERS: {sorted(units ^ set(LAYERS))}"


def test_imports_only_go_down():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        src_unit = _unit(_module_name(path))
        if src_unit == PACKAGE_INIT:
            continue
        for line, target in _imports(path):
            dst_unit = _unit(target)
            if dst_unit == src_unit or dst_unit == PACKAGE_INIT and target == "transformer_grow":
                continue
            src_layer, dst_layer = LAYERS[src_unit], LAYERS.get(dst_unit, 99)
            if dst_layer > src_layer or (dst_layer == src_layer and src_layer != 0):
                bad.append(f"{path.relative_to(SRC)}:{line} ({src_unit}, layer {src_layer}) imports {target} "
                           f"({dst_unit}, layer {dst_layer})")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_scaling_does_not_import_torch():
    offenders = []
    for path in sorted((SRC / "scaling").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno}" for n in names if n.split(".")[0] == "torch"]
    assert not offenders, offenders


def test_import_graph_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a model module importing the trainer is reported."""
    fake = tmp_path / "transformer_grow" / "model"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from transformer_grow.train.trainer import Trainer\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "transformer_grow")
    with pytest.raises(AssertionError, match="model/x.py:2"):
        test_imports_only_go_down()


@pytest.mark.parametrize("module, forbidden", [
    ("transformer_grow.operators", ["scipy", "tokenizers", "transformer_grow.train", "transformer_grow.plans",
                                    "transformer_grow.run", "transformer_grow.data", "matplotlib"]),
    ("transformer_grow.model", ["scipy", "tokenizers", "transformer_grow.operators", "transformer_grow.train"]),
    ("transformer_grow.train", ["scipy", "transformer_grow.plans", "transformer_grow.run", "transformer_grow.compare",
                                "matplotlib"]),
    ("transformer_grow.scaling", ["torch", "transformer_grow.train"]),
])
def test_importing_a_layer_loads_nothing_above_it(module, forbidden):
    code = (f"import sys, {module}\n"
            f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import {module} loaded {out}"
