"""The documented example configuration, shipped inside the package for `syncd init`."""

from __future__ import annotations

from importlib.resources import files


def example_config() -> str:
    """The text of `config.example.toml` (every key, documented)."""
    return files("syncd").joinpath("data/config.example.toml").read_text(encoding="utf-8")
