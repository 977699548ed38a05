"""The layout's rules, checked on every import statement of the source (module-level and inside functions alike).

- data_prep (the collector) imports neither torch, transformers, deepspeed nor worldpm: it runs on CPU-only data machines.
- worldpm.model (the reward reader) imports nothing from data, train, eval or serve; worldpm.data nothing from train, eval, serve.
- worldpm.train nothing from eval or serve; worldpm.eval nothing from train or serve (it loads models through worldpm.model);
  worldpm.serve nothing from train or eval. Only worldpm.cli knows every verb.
- At most 8 modules directly in worldpm/ (the shared, torch-free ones); everything else lives in its part.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("model", "data", "train", "eval", "serve")
FORBIDDEN = {  # package -> prefixes of modules it must not import
    "data_prep": ("torch", "transformers", "deepspeed", "worldpm"),
    "worldpm.model": ("worldpm.data", "worldpm.train", "worldpm.eval", "worldpm.serve", "worldpm.cli"),
    "worldpm.data": ("worldpm.train", "worldpm.eval", "worldpm.serve", "worldpm.cli"),
    "worldpm.train": ("worldpm.eval", "worldpm.serve", "worldpm.cli"),
    "worldpm.eval": ("worldpm.train", "worldpm.serve", "worldpm.cli"),
    "worldpm.serve": ("worldpm.train", "worldpm.eval", "worldpm.cli"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file of module `name`, relative imports resolved; `from a import b`
    counts as a.b too (b may be a submodule: `from worldpm import train`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def source_files():
    return sorted(p for top in ("worldpm", "data_prep") for p in (ROOT / top).rglob("*.py"))


def violations(path: Path, name: str) -> list[str]:
    bad = []
    for package, banned in FORBIDDEN.items():
        if name != package and not name.startswith(package + "."):
            continue
        for line, imported in imports_of(path, name):
            if any(imported == b or imported.startswith(b + ".") for b in banned):
                bad.append(f"{path.name}:{line}: {name} imports {imported}")
    return bad


def test_every_import_follows_the_layering_rules():
    assert [v for path in source_files() for v in violations(path, module_name(path))] == []


def test_the_scanner_sees_imports_inside_functions_and_relative_ones(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    from worldpm.serve import scorers\n\nfrom ..train import recipe\n")
    found = violations(probe, "worldpm.model.probe")
    assert {v.split(":")[1] for v in found} == {"4", "6"}, found
    assert any(v.endswith("imports worldpm.serve.scorers") for v in found) and any(v.endswith("imports worldpm.train") for v in found)
    assert violations(probe, "worldpm.serve.probe") == [f"probe.py:6: worldpm.serve.probe imports {m}"
                                                        for m in ("worldpm.train", "worldpm.train.recipe")]


def test_at_most_eight_modules_directly_in_worldpm_and_each_part_is_a_package():
    top = sorted(p.name for p in (ROOT / "worldpm").glob("*.py"))
    assert len(top) <= 8, top
    for part in PARTS:
        assert (ROOT / "worldpm" / part / "__init__.py").exists(), part


@pytest.mark.parametrize("module", ["worldpm.cli", "worldpm.config", "worldpm.errors", "worldpm.atomic_dir", "worldpm.run_layout",
                                    "worldpm.ports", "worldpm.model.chat_format"])
def test_shared_modules_stay_torch_free(module):
    """The CLI's start-up path and the shared modules import no torch: a bad override fails before torch loads."""
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
