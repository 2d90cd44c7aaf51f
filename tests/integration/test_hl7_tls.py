"""The MLLP listener over TLS: a sender that trusts the listener's certificate gets its
ACK after the message is committed; a plain-text sender gets no ACK and nothing is stored.
A real TLS handshake over a socket, with a certificate made for the test (cryptography)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from sqlalchemy import Engine

from syncd.config_hl7 import Hl7Settings
from syncd.exceptions import ConfigError
from syncd.hl7.apply import Hl7Apply
from syncd.hl7.feed import Hl7Feed, tls_context
from syncd.hl7.inbound import counts_by_status
from syncd.hl7.mapping import Hl7Mapping
from syncd.hl7.mllp import MllpClient, ack_code
from syncd.jobs import JobRunner
from syncd.normalize import NormalizePolicy
from tests.certificates import write_certificate
from tests.hl7_messages import adt


async def test_a_sender_over_tls_gets_its_ack_and_plain_text_gets_nothing(
    state_engine: Engine, tmp_path: Path
) -> None:
    cert_file, key_file = write_certificate(tmp_path)
    settings = Hl7Settings.model_validate(
        {
            "port": 0,
            "apply_interval_seconds": 3600.0,
            "tls_cert_file": str(cert_file),
            "tls_key_file": str(key_file),
        }
    )
    # No Voxares client: nothing is applied within the test, only received and stored.
    apply = Hl7Apply(state_engine, None, NormalizePolicy(), Hl7Mapping(), provider="ehr")  # type: ignore[arg-type]
    feed = Hl7Feed(state_engine, apply, settings)
    await feed.start(JobRunner(state_engine))
    try:
        assert feed.listener is not None
        port = feed.listener.port
        trusting = ssl.create_default_context(cafile=str(cert_file))
        client = await MllpClient.connect("127.0.0.1", port, tls=trusting)
        try:
            assert ack_code(await client.send(adt("t1", "P1").encode())) == "AA"
        finally:
            await client.close()

        plain = await MllpClient.connect("127.0.0.1", port)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await plain.send(adt("t2", "P2").encode())
        await plain.close()
    finally:
        await feed.stop()
    assert counts_by_status(state_engine) == {"pending": 1}


def test_an_unloadable_certificate_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    """A certificate file that is not one is a configuration error, not a crash."""
    _, key_file = write_certificate(tmp_path)
    bogus = tmp_path / "bogus.crt"
    bogus.write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        tls_context(bogus, key_file)
    assert raised.value.problems == [
        "hl7.tls_cert_file: cannot load the certificate and key (SSLError)"
    ]


def test_a_private_key_every_user_can_read_is_refused(tmp_path: Path) -> None:
    """As the API key file: the listener's TLS key open to every user stops start-up."""
    cert_file, key_file = write_certificate(tmp_path)
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as raised:
        tls_context(cert_file, key_file)
    (line,) = raised.value.problems
    assert line.startswith(f"hl7.tls_key_file: {key_file} is open to every user")
    assert line.endswith(f"chmod 0600 {key_file}")
