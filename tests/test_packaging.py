"""The distribution lists every package explicitly (flat layout): nothing the code imports may be left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tops = {name.split(".")[0] for name in listed}
    found = set()
    for top in tops:
        for py in (ROOT / top).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            found.add(".".join(py.parent.relative_to(ROOT).parts))
    assert found == listed, f"unlisted: {sorted(found - listed)}; listed but empty: {sorted(listed - found)}"
    for pkg in listed:
        assert (ROOT / pkg.replace(".", "/") / "__init__.py").exists(), f"{pkg} has no __init__.py"


def test_readme_quick_start_and_ci_agree() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in ci
