"""The migrations ship in the wheel as `syncd.migrations`, and are found from a checkout."""

from __future__ import annotations

import tomllib
from pathlib import Path

from syncd.state.db import migrations_path

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]  # type: ignore[no-any-return]


def test_every_syncd_package_is_listed_for_the_wheel() -> None:
    """pyproject's explicit package list names every package under syncd/ and the migrations
    (a package left out would be missing from `pip install .` and the Docker image)."""
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "syncd").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    assert on_disk | {"syncd.migrations", "syncd.migrations.versions"} == listed


def test_migrations_are_mapped_into_the_package() -> None:
    """package-dir maps the top-level migrations/ to syncd.migrations, with its template."""
    config = _setuptools()
    assert config["package-dir"] == {"syncd.migrations": "migrations"}
    assert "script.py.mako" in config["package-data"]["syncd.migrations"]  # type: ignore[index]
    assert (ROOT / "migrations" / "script.py.mako").is_file()


def test_checkout_finds_its_migrations() -> None:
    """In a checkout (editable install) the top-level migrations/ directory is used."""
    assert migrations_path() == ROOT / "migrations"
    assert sorted(p.name for p in (ROOT / "migrations" / "versions").glob("0001_*.py")) == [
        "0001_initial.py"
    ]
