"""`SandboxCore`: what every part of the emulated API shares: clock, ids, practices, keys.

The parts (`syncd.sandbox.submissions.FormSubmissions`, then `syncd.sandbox.state.Sandbox`
for patients, messages and content) build on this class, each in its own module.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd.sandbox import seed as content
from syncd.sandbox.errors import invalid, not_found
from syncd.sandbox.freedoms import to_ms
from syncd.sandbox.listing import ListCache
from syncd.sandbox.practice import Practice
from syncd.sandbox.records import ApiKey, Document, Form, Template
from syncd.voxares.contract import ALL_SCOPES


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SandboxCore:
    """Clock, seeded ids, practices and their API keys, request counts, the list cache.

    `seed` makes ids and generated data reproducible; `clock` (aware datetimes) drives every
    timestamp, so tests can move time by hand. A server clock offset (a fault) is applied on
    top through `clock_offset`.
    """

    def __init__(self, seed: int = 0, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or _utc_now
        self.seed = seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Forget everything and start again from the default seed data."""
        if seed is not None:
            self.seed = seed
        self.rng = random.Random(self.seed)
        self.clock_offset = timedelta(0)
        self.practices: dict[str, Practice] = {}
        self.keys: dict[str, ApiKey] = {}
        self.requests: Counter[str] = Counter()
        self.changes = 0  # bumped by every change; persistence compares it
        self.lists = ListCache()
        self.demo_practice_id = self.add_practice(content.DEMO_PRACTICE_NAME)
        self._add_key(
            self.demo_practice_id,
            content.DEMO_KEY_ID,
            content.DEMO_KEY_SECRET,
            content.DEMO_KEY_NAME,
            ALL_SCOPES,
        )

    def now(self) -> datetime:
        """The server's time: the clock plus any offset, at millisecond precision."""
        return to_ms(self._clock() + self.clock_offset)

    def new_id(self) -> str:
        """A random (seeded) version-4 UUID."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _touch(self) -> None:
        self.changes += 1

    def count_request(self, label: str) -> None:
        """Count one answered request, labelled "METHOD /template status"."""
        self.requests[label] += 1

    # ----------------------------------------------------------------- practices and keys

    def add_practice(self, name: str, *, seed_content: bool = True) -> str:
        """Create a practice (with the default templates, forms and documents); its id."""
        practice = Practice(id=self.new_id(), name=name, user_id=self.new_id())
        self.practices[practice.id] = practice
        if seed_content:
            now = self.now()
            for template_name, text in content.TEMPLATES:
                template = Template(self.new_id(), template_name, text, now, now)
                practice.templates[template.id] = template
            for display_name, questions in content.FORMS:
                form = Form(self.new_id(), display_name, questions)
                practice.forms[form.id] = form
            for document_name in content.DOCUMENTS:
                document = Document(self.new_id(), document_name)
                practice.documents[document.id] = document
        self._touch()
        return practice.id

    def issue_key(self, practice_id: str, name: str, scopes: Iterable[str] = ALL_SCOPES) -> str:
        """Create an API key for a practice; returns the full `vox-<id>-<secret>` key."""
        key_id = f"{self.rng.getrandbits(40):010x}"
        secret = f"{self.rng.getrandbits(128):032x}"
        return self._add_key(practice_id, key_id, secret, name, scopes)

    def _add_key(
        self, practice_id: str, key_id: str, secret: str, name: str, scopes: Iterable[str]
    ) -> str:
        practice = self._practice(practice_id)
        scope_set = frozenset(scopes)
        unknown = scope_set - set(ALL_SCOPES)
        if unknown:
            raise invalid([f"unknown scope {scope}" for scope in sorted(unknown)])
        if not name.strip():
            raise invalid(["key name should not be empty"])
        key = ApiKey(key_id, secret, practice_id, name, scope_set)
        self.keys[key.token] = key
        practice.key_names.append(name)
        self._touch()
        return key.token

    def authenticate(self, token: str) -> ApiKey | None:
        """The key for a bearer token, or None when no such key exists."""
        return self.keys.get(token)

    def _practice(self, practice_id: str) -> Practice:
        practice = self.practices.get(practice_id)
        if practice is None:
            raise not_found("Practice")
        return practice

    def _practices(self, practice_id: str | None) -> list[Practice]:
        """One practice (404 when unknown), or every practice when `practice_id` is None."""
        return [self._practice(practice_id)] if practice_id else list(self.practices.values())

    def _cached(
        self, cache_key: tuple[Any, ...], stamp: tuple[int, int], compute: Callable[[], list[Any]]
    ) -> list[Any]:
        return self.lists.get(cache_key, stamp, compute)
