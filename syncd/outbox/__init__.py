"""The transactional outbox: events written with their cause, delivered to sinks later."""

from syncd.outbox.events import emit

__all__ = ["emit"]
