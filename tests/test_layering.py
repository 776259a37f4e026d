"""Import layering: library modules never import an entry script, metrics never imports plots."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = {p.stem for p in ROOT.glob("*.py")}  # train, train_kd, val, detect, export, quickstart
LIBRARY = sorted(p for d in ("utils", "models") for p in (ROOT / d).rglob("*.py"))


def imported_modules(path):
    """Top-level names of every module a file imports (anywhere in it, also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_entry_scripts_are_known():
    assert {"train", "train_kd", "val", "detect", "export"} <= ENTRY_SCRIPTS and len(LIBRARY) > 20


def test_no_library_module_imports_an_entry_script():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in ENTRY_SCRIPTS)
           for p in LIBRARY}
    assert not {k: v for k, v in bad.items() if v}


def test_metrics_does_not_import_plots():
    assert not any(m.startswith("utils.plots") for m in imported_modules(ROOT / "utils" / "metrics.py"))
    assert "utils.metrics" in imported_modules(ROOT / "utils" / "plots.py")
