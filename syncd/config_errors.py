"""Turning pydantic's validation errors into the one-line problems `syncd` prints.

Each problem is `key.path: reason`, without the offending value (it may be a secret). A value
that came from the environment is named by its variable instead, because that is what the
operator has to fix: `SYNCD_VOXARES__REQUESTS_PER_SECOND: must be a valid number`, not
`voxares.requests_per_second`, which may not even be in the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Final

from pydantic_core import ErrorDetails

from syncd.config_fields import ERROR_TYPE

ENV_PREFIX: Final = "SYNCD_"

# The tag of a tagged union shows up in pydantic's error location; users never write it.
_TAGGED_UNIONS: Final = {
    ("patients", "source"): (2, ("csv", "sql")),
    ("outbox", "sinks"): (3, ("webhook", "file", "amqp")),
    ("messages", "sources"): (3, ("csv", "sql")),
}

KeyPath = tuple[str, ...]


def env_variable(path: KeyPath) -> str:
    """The environment variable that sets the key at `path` (`SYNCD_<SECTION>__<KEY>`)."""
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def env_paths(environ: Mapping[str, str], sections: Iterable[str]) -> set[KeyPath]:
    """The key paths set by `SYNCD_<SECTION>__...` variables of `environ`, lower case.

    Only variables naming one of `sections` count (`SYNCD_CONFIG` is not a key).
    """
    wanted = {section.lower() for section in sections}
    paths: set[KeyPath] = set()
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        if path[0] in wanted:
            paths.add(path)
    return paths


def describe(error: ErrorDetails, from_env: AbstractSet[KeyPath] = frozenset()) -> str:
    """One `key.path: reason` line for a pydantic error, without the offending value.

    `from_env`: the key paths set by environment variables (see `env_paths`); an error at or
    below one of them is reported under the variable's name.
    """
    loc: list[str | int] = list(error["loc"])
    tags: tuple[str, ...] = ()
    for prefix, (position, union_tags) in _TAGGED_UNIONS.items():
        if tuple(loc[:2]) == prefix:
            tags = union_tags
            if len(loc) > position and loc[position] in union_tags:
                del loc[position]
    kind = error["type"]
    reason = error["msg"]
    if kind == ERROR_TYPE:
        context = error.get("ctx") or {}
        reason = str(context.get("reason", reason))
        key = str(context.get("key", ""))
        if key:
            loc.extend(key.split("."))
    elif kind == "missing":
        reason = "required"
    elif kind == "extra_forbidden":
        reason = "unknown key"
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        loc.append("type")
        reason = ("required, one of " if kind == "union_tag_not_found" else "must be one of ") + (
            ", ".join(tags)
        )
    else:
        reason = reason.removeprefix("Value error, ").replace("Input should", "must")
        value = error.get("input")
        if isinstance(value, str) and len(value) >= 3 and value in reason:
            reason = "invalid value"
    variable = _variable_for(loc, from_env)
    return f"{variable or join(loc)}: {reason}"


def _variable_for(loc: list[str | int], from_env: AbstractSet[KeyPath]) -> str | None:
    """The variable whose value the error is about: the longest env path prefixing `loc`."""
    names = tuple(str(part).lower() for part in loc if isinstance(part, str))
    # Indexes ([0]) and "[0]" context keys belong to the value of the variable above them.
    names = tuple(part for part in names if not part.startswith("["))
    for length in range(len(names), 0, -1):
        if names[:length] in from_env:
            return env_variable(names[:length])
    return None


def join(loc: list[str | int]) -> str:
    """`voxares.base_url`, `patients.date_formats[1]`: a key path as users write it."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):
            text += part
        else:
            text += f".{part}" if text else part
    return text or "config"
