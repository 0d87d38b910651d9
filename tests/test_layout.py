"""The package's shape: the import contracts of pyproject.toml (checked by import-linter), no import
cycles (which import-linter cannot state), and a start-up that does not load torch before it is needed."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pamc

ROOT = Path(pamc.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """pamc modules a file imports anywhere in it (function-level imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("pamc"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pamc"))
    return found


def graph() -> dict[str, set[str]]:
    """Import edges between pamc modules.  A package's edges to its own submodules are left out:
    a family module importing its package's registry, which imports the family to register it,
    is the registration pattern (timm's too), not a cycle between concepts."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name and not m.startswith(name + ".")}
            for name, path in modules.items()}


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in g[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles():
    g = graph()
    cycles = sorted(m for m in g if m in reachable(g, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_import_contracts_hold():
    """`lint-imports` with the contracts in pyproject.toml: the library never imports the
    applications; evaluation, explanation and checkpoints never the engine; the layers; the
    independent concepts; the leaf modules."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    root = Path(pamc.__file__).parents[2]
    if not (root / "pyproject.toml").is_file():
        pytest.skip("pamc is not run from its source tree (no pyproject.toml beside src/)")
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--config", str(root / "pyproject.toml"), "--no-cache"],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _loads_torch(code: str) -> bool:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_pamc_and_help_do_not_load_torch():
    assert not _loads_torch("import pamc")
    assert not _loads_torch("from pamc.apps.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not _loads_torch("from pamc.apps.cli import main\ntry:\n    main(['trian'])\nexcept SystemExit:\n    pass")
    assert _loads_torch("import pamc\npamc.CamClassifier")


def test_public_names_reach_every_part():
    from pamc.posthoc import boost

    assert pamc.boost is boost
    assert callable(pamc.boostlu) and callable(pamc.train)
    assert pamc.explain.cams is not None and pamc.metrics.mean_average_precision is not None
    assert pamc.data.load_bundle is not None and set(pamc.__all__) <= set(dir(pamc))
