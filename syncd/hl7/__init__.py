"""HL7 v2 ADT feeds: an MLLP listener and a file drop, into the patient mirror.

The receive path (`receiver.py`) only makes a message durable: frame → header → one row
in `hl7_inbound`, committed → ACK. The apply job (`apply.py`) turns pending rows into
patients through the same normalise / quarantine / hash / push path as the CSV source.

Modules: `message.py` (pure: bytes → decoded message and header, ACKs), `mapping.py`
(pure: ADT → patient rows and merges), `mllp.py` (framing, the asyncio listener, a
client), `inbound.py` (the inbound table), `receiver.py`, `files.py` (the file source),
`apply.py`, `feed.py` (what the daemon runs).

Parsing uses the `hl7` package (python-hl7): small, pure Python, no dependencies, and it
does what is fiddly (separators from MSH-1/MSH-2, escape sequences, FHS/BHS batches)
without imposing a version-specific message model. hl7apy validates against each HL7
version's structures, which a feed from real interface engines (Z-segments, version
drift) fails more often than it helps; we only read MSH, EVN, PID and MRG.
"""
