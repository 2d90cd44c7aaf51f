"""The sandbox's default content and the synthetic data it generates.

Everything here is invented: names from short lists, phone numbers in reserved ranges,
answers picked from fixed choices. Generation is driven by a `random.Random` so a seed gives
the same data every run.
"""

from __future__ import annotations

import base64
import random
from typing import Any, Final

DEMO_PRACTICE_NAME: Final = "Demo Clinic"
DEMO_KEY_ID: Final = "demo"
DEMO_KEY_SECRET: Final = "sandboxdemosecret0000"  # noqa: S105 (public demo key)
DEMO_API_KEY: Final = f"vox-{DEMO_KEY_ID}-{DEMO_KEY_SECRET}"
# The demo key's name, which is also the default `provider` of what it creates.
DEMO_KEY_NAME: Final = "syncd-demo"

# (name, content) of every practice's starting templates; some carry variables.
TEMPLATES: Final = (
    (
        "Appointment reminder",
        "Hi {{firstName}}, this is a reminder of your appointment at the clinic tomorrow. "
        "Reply STOP to opt out.",
    ),
    (
        "Intake form request",
        "Hello {{firstName}} {{lastName}}, please fill in your intake form before your visit.",
    ),
    ("Clinic closed", "The clinic is closed on Monday for maintenance. Sorry for the trouble!"),
    ("Lab results ready", "Poštovani {{lastName}}, vaši nalazi su spremni za preuzimanje."),
)

# (displayName, questions) of every practice's starting forms.
FORMS: Final = (
    ("New patient intake", ("allergies", "medications", "emergencyContact", "smoker")),
    ("Consent to treatment", ("consentGiven", "consentDate")),
    ("Pre-visit screening", ("fever", "cough", "recentTravel")),
)

DOCUMENTS: Final = ("Privacy policy", "Aftercare instructions", "Price list")

FIRST_NAMES: Final = (
    "Ana", "Ivan", "Marta", "Luka", "Petra", "Marko", "Iva", "Josip", "Lucija", "Tomislav",
    "Maja", "Filip", "Sara", "Karlo", "Nina", "Dario", "Ema", "Ante", "Lea", "Mateo",
)  # fmt: skip
LAST_NAMES: Final = (
    "Horvat", "Kovačević", "Babić", "Marić", "Jurić", "Novak", "Kovačić", "Knežević",
    "Vuković", "Marković", "Petrović", "Matić", "Tomić", "Pavlović", "Božić", "Blažević",
)  # fmt: skip

_ANSWERS: Final[dict[str, tuple[Any, ...]]] = {
    "allergies": ("none", "penicillin", "pollen", "peanuts"),
    "medications": ("none", "ibuprofen as needed", "levothyroxine 50 mcg"),
    "emergencyContact": ("spouse", "parent", "sibling", "friend"),
    "smoker": (False, True),
    "consentGiven": (True,),
    "consentDate": ("2025-05-20", "2025-06-02", "2025-07-14"),
    "fever": (False, True),
    "cough": (False, True),
    "recentTravel": (False, True),
}

SIGNATURE_VARIANTS: Final = 4
_PNG_HEADER: Final = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def signature_data_url(rng: random.Random, min_bytes: int = 38_000, max_bytes: int = 75_000) -> str:
    """A fake PNG signature as a base64 data URL of roughly 50-100 KB of text."""
    size = rng.randint(min_bytes, max_bytes)
    raw = _PNG_HEADER + rng.randbytes(size)
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def generated_answers(questions: tuple[str, ...], variant: int, signature: str) -> dict[str, Any]:
    """Answers to a form's questions, picked by `variant`, plus a signature data URL."""
    answers: dict[str, Any] = {}
    for index, question in enumerate(questions):
        choices = _ANSWERS.get(question, ("yes", "no"))
        answers[question] = choices[(variant + index) % len(choices)]
    answers["signature"] = signature
    return answers


def synthetic_person(rng: random.Random, index: int) -> dict[str, str]:
    """A made-up patient body (contract field names) for bulk seeding."""
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    born = f"{rng.randint(1930, 2015)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    # +1 555 01xx is reserved for fiction; the suffix keeps numbers distinct.
    return {
        "firstName": first,
        "lastName": last,
        "mobileNumber": f"+1555{index % 10_000_000:07d}",
        "email": f"{first.lower()}.{index}@example.org",
        "dateOfBirth": born,
    }
