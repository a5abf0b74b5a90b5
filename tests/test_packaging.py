"""One import package: pyproject's explicit package list matches the folders, and nothing else is installed.

``scripts/wheel-check`` (run by CI) builds the wheel, installs it into a clean venv and runs it; this test keeps
the list in ``pyproject.toml`` honest on every test run, so a new sub-package cannot be left out of the wheel.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_one_top_level_import_package() -> None:
    cfg = _setuptools()
    assert cfg["package-dir"] == {"sepconv": "sepconv", "sepconv.export": "export", "sepconv.service": "service"}
    assert all(p == "sepconv" or p.startswith("sepconv.") for p in cfg["packages"])


def test_package_list_matches_the_folders() -> None:
    cfg = _setuptools()
    found = set()
    for package, folder in cfg["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "__")) for part in rel.parts):
                continue
            found.add(".".join([package, *rel.parts]))
    # a mapped folder nested in another mapped one (none today) would be listed twice; sets take care of it
    assert sorted(found) == sorted(cfg["packages"]), (
        f"pyproject.toml [tool.setuptools] packages is out of date: missing {sorted(found - set(cfg['packages']))}, "
        f"extra {sorted(set(cfg['packages']) - found)}")


def test_package_data_ships_the_dashboard() -> None:
    data = _setuptools()["package-data"]
    assert "static/*" in data["sepconv.service"]
    assert (ROOT / "service" / "static" / "dashboard.html").is_file()
