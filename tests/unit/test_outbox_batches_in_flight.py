"""`outbox.batches_in_flight`: its range in the configuration and the job, and the lease
it asks for (a batch shares the sink's concurrency with the other batches in flight)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from syncd.compose import _delivery_lease_seconds
from syncd.config import Settings, load_settings
from syncd.exceptions import ConfigError
from syncd.outbox.delivery import OutboxDeliveryJob

ENV = {"SYNCD_VOXARES__API_KEY": "vox-k1-Sup3rSecretKeyMaterial"}
WEBHOOK = """
    [outbox.sinks.crm]
    type = "webhook"
    url = "https://crm.example.org/hook"
    secret = "whsec_Y2hhbmdlLW1lLXRvLWEtcmVhbC1zZWNyZXQ="
    connect_timeout = 5.0
    read_timeout = 10.0
"""


def load(tmp_path: Path, outbox: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(f"[outbox]\n{outbox}\n{WEBHOOK}"), encoding="utf-8")
    return load_settings(path, ENV)


def test_default_is_two_batches_in_flight(tmp_path: Path) -> None:
    """Unset, a sink keeps two batches in flight."""
    assert load(tmp_path, "").outbox.batches_in_flight == 2


@pytest.mark.parametrize("value", ["0", "9", "true", "2.5"])
def test_out_of_range_values_are_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    """0, 9, a bool or a fraction is a ConfigError naming outbox.batches_in_flight."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"batches_in_flight = {value}")
    assert any(p.startswith("outbox.batches_in_flight") for p in info.value.problems)


@pytest.mark.parametrize("value", [0, 9])
def test_the_job_refuses_out_of_range_values(value: int) -> None:
    """The job itself accepts only 1..8 lanes."""
    engine = create_engine("sqlite://")
    with pytest.raises(ValueError, match="batches_in_flight"):
        OutboxDeliveryJob(engine, {}, {}, batches_in_flight=value)


def test_the_lease_covers_every_batch_in_flight(tmp_path: Path) -> None:
    """Batches of 100 at 16 requests a time and 15 s per request: 7 rounds for one batch
    in flight (210 s), 13 rounds for two sharing the sink (390 s), doubled."""
    one = load(tmp_path, "batch_size = 100\nbatches_in_flight = 1")
    two = load(tmp_path, "batch_size = 100\nbatches_in_flight = 2")
    assert _delivery_lease_seconds(one) == 2 * 7 * 15.0
    assert _delivery_lease_seconds(two) == 2 * 13 * 15.0
