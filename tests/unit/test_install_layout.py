"""One installation layout and one API-key order, the same in the code, the systemd unit, the
Dockerfile and every document that states them."""

from __future__ import annotations

import re
from pathlib import Path

from syncd.api_key import API_KEY_CREDENTIAL, PLACES
from syncd.config import DEFAULT_API_KEY_FILE, DEFAULT_DATABASE_URL, STATE_DIRECTORY

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "voxares-syncd.service"
DOCKERFILE = ROOT / "Dockerfile"


def unit_values(key: str) -> list[str]:
    """The values of `key=` in the unit file."""
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_default_database_is_in_the_units_and_the_images_state_directory() -> None:
    """The default state database lies in the unit's StateDirectory= and the image's VOLUME,
    and neither sets SYNCD_DATABASE__URL, which would override the config file for the
    service only (the shell and the service would see different databases)."""
    assert f"sqlite:///{STATE_DIRECTORY}/state.db" == DEFAULT_DATABASE_URL
    [state] = unit_values("StateDirectory")
    assert Path("/var/lib") / state == STATE_DIRECTORY
    assert f'VOLUME ["{STATE_DIRECTORY}"]' in DOCKERFILE.read_text(encoding="utf-8")
    assert "SYNCD_DATABASE__URL" not in "".join(unit_values("Environment"))
    assert "SYNCD_DATABASE__URL=" not in DOCKERFILE.read_text(encoding="utf-8")


def test_the_credential_is_made_from_the_default_key_file() -> None:
    """The unit's credential is the default api_key_file, under the name syncd reads; the
    image points api_key_file at the Docker secret of that name."""
    [credential] = unit_values("LoadCredential")
    assert credential == f"{API_KEY_CREDENTIAL}:{DEFAULT_API_KEY_FILE}"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"SYNCD_VOXARES__API_KEY_FILE=/run/secrets/{API_KEY_CREDENTIAL}" in dockerfile


def test_every_document_states_the_key_order_of_the_code() -> None:
    """README, deploy/README and config.example.toml name the three places in the order
    syncd.api_key tries them."""
    names = ["SYNCD_VOXARES__API_KEY", API_KEY_CREDENTIAL, "api_key_file"]
    assert [next(n for n in names if n in place) for place in PLACES] == names
    for document in ("README.md", "deploy/README.md", "config.example.toml"):
        text = (ROOT / document).read_text(encoding="utf-8")
        start = text.index("SYNCD_VOXARES__API_KEY")
        positions = [text.find(name, start) for name in names]
        assert -1 not in positions, document
        assert positions == sorted(positions), f"{document} states another order"
