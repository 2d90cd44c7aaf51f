"""The example configuration shipped inside the package for `syncd init`."""

from pathlib import Path

from typer.testing import CliRunner

from syncd.cli import app
from syncd.examples import example_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_example_is_the_documented_one() -> None:
    """`syncd init` writes exactly the top-level config.example.toml (no drifting copy)."""
    assert example_config() == (ROOT / "config.example.toml").read_text(encoding="utf-8")


def test_init_writes_the_example_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """`syncd init PATH` writes the example once; a second call leaves the file alone."""
    target = tmp_path / "config.toml"
    first = CliRunner().invoke(app, ["init", str(target)])
    assert first.exit_code == 0, first.output
    assert target.read_text(encoding="utf-8") == example_config()

    target.write_text("# edited\n", encoding="utf-8")
    second = CliRunner().invoke(app, ["init", str(target)])
    assert second.exit_code == 1
    assert target.read_text(encoding="utf-8") == "# edited\n"
