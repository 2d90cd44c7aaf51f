"""The `[hl7]` settings: defaults, and one line naming the key for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import load_settings
from syncd.exceptions import ConfigError


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env={}, need_api_key=False)


def test_a_hl7_table_turns_the_feed_on(tmp_path: Path) -> None:
    """[hl7] with any key is enabled; defaults are loopback, port 2575, MR identifiers."""
    settings = _load(tmp_path, "[hl7]\nport = 3000\n")
    hl7 = settings.hl7  # type: ignore[attr-defined]
    assert hl7.enabled
    assert (hl7.host, hl7.port) == ("127.0.0.1", 3000)
    assert hl7.mapping.identifier_type == "MR"
    assert not _load(tmp_path, "").hl7.enabled  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[hl7]\nallowed_peers = ["10.0.0.0/8", "nonsense"]\n', "hl7.allowed_peers[1]"),
        ('[hl7]\ntls_cert_file = "/x.crt"\n', "hl7.tls_key_file"),
        ("[hl7]\nport = 70000\n", "hl7.port"),
        ('[hl7]\ndefault_charset = "klingon"\n', "hl7.default_charset"),
        ("[hl7]\nlisten = false\n", "hl7.listen"),
        ("[hl7.mapping]\nname_typ = 'L'\n", "hl7.mapping.name_typ"),
    ],
)
def test_mistakes_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    """Each bad [hl7] value stops start-up with a line naming its key."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert key in str(caught.value)


def test_the_apply_job_is_held_to_a_freshness_like_any_job(tmp_path: Path) -> None:
    """`syncd status`, `/readyz`, the status page and the metrics watch `apply_hl7` when
    the feed is on (the feed runs it, not the scheduler), and not when it is off."""
    from datetime import timedelta

    from syncd.compose import job_freshness, specs_for

    on = _load(tmp_path, "[hl7]\napply_interval_seconds = 120\n")
    assert job_freshness(on)["apply_hl7"] == timedelta(seconds=1200)  # type: ignore[arg-type]
    assert "apply_hl7" not in specs_for(on)  # type: ignore[arg-type]
    assert "apply_hl7" not in job_freshness(_load(tmp_path, ""))  # type: ignore[arg-type]
