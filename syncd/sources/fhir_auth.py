"""How a FHIR source authenticates: none, HTTP basic, a bearer token, or SMART Backend
Services (OAuth 2.0 client credentials with a signed JWT assertion, which is how US EHR APIs
grant a system access to all patients).

Each is an `httpx.Auth`. The secrets (password, token, private key) are read from a file or
a systemd credential by `read_secret`, held as `SecretStr`, and appear in no log line, error
message or repr.

SMART Backend Services (hl7.org/fhir/smart-app-launch/backend-services.html): the client
signs a JWT (`iss` = `sub` = client id, `aud` = token URL, `exp` at most 5 minutes ahead, a
fresh `jti`) with its private key (RS384 or ES384, `kid` naming the key in its published
JWK Set), posts it to the token endpoint as a `client_credentials` grant with
`client_assertion_type = urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, and uses
the access token until shortly before it expires. A 401 on a request made with a cached token
fetches a new token once. PyJWT (with `cryptography`) signs: the `fhir` extra.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import SecretStr

from syncd.config_fields import open_to_everyone
from syncd.exceptions import ConfigError, SourceError

CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The longest lifetime the SMART specification allows an assertion.
_ASSERTION_SECONDS: Final = 300
# A token is renewed this long before the server says it expires.
_RENEW_MARGIN_SECONDS: Final = 60.0
_MAX_SECRET_BYTES: Final = 65536


def read_secret(
    key: str,
    *,
    file: str | Path | None,
    credential: str | None,
    environ: Mapping[str, str] | None = None,
) -> SecretStr:
    """A secret from the systemd credential `credential` (when set and present), else from
    `file`; `ConfigError` naming `key` otherwise. The secret's text is never quoted."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if credential and directory and (Path(directory) / credential).is_file():
        return _read(Path(directory) / credential, f"{key} (credential {credential})")
    if file:
        return _read(Path(file), key)
    raise ConfigError([f"{key}: not set (a file, or a systemd credential)"])


def _read(path: Path, key: str) -> SecretStr:
    try:
        with path.open("rb") as handle:
            # A password, token or private key every user of the machine can read is
            # refused, as the API key file is (syncd.config_fields.open_to_everyone).
            exposed = open_to_everyone(handle.fileno(), path)
            data = b"" if exposed else handle.read(_MAX_SECRET_BYTES)
    except OSError as exc:
        raise ConfigError(
            [f"{key}: cannot read {path}: {exc.strerror or type(exc).__name__}"]
        ) from None
    if exposed is not None:
        raise ConfigError([f"{key}: {exposed}"])
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError([f"{key}: {path} is not UTF-8 text"]) from None
    if not text:
        raise ConfigError([f"{key}: {path} is empty"])
    return SecretStr(text)


class BearerAuth(httpx.Auth):
    """A fixed bearer token."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(token=**********)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


def basic_auth(username: str, password: SecretStr) -> httpx.Auth:
    """HTTP basic authentication."""
    return httpx.BasicAuth(username, password.get_secret_value())


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: an access token got with a signed JWT (module docstring)."""

    requires_response_body = True

    def __init__(
        self,
        *,
        client_id: str,
        token_url: str,
        private_key: SecretStr,
        key_id: str,
        scope: str,
        algorithm: str = "RS384",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ConfigError(["auth.algorithm: must be RS384 or ES384 (SMART Backend Services)"])
        self._client_id = client_id
        self._token_url = token_url
        self._private_key = private_key
        self._key_id = key_id
        self._scope = scope
        self._algorithm = algorithm
        self._clock = clock
        self._token: SecretStr | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self._client_id!r}, token_url={self._token_url!r})"

    def assertion(self) -> str:
        """A freshly signed client assertion (a JWT)."""
        try:
            import jwt
        except ImportError:
            raise SourceError(
                "SMART Backend Services needs PyJWT: pip install 'voxares-syncd[fhir]'"
            ) from None
        now = int(time.time())  # the claims are on the wall clock (the token's life is not)
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._token_url,
            "exp": now + _ASSERTION_SECONDS,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        try:
            return jwt.encode(
                claims,
                self._private_key.get_secret_value(),
                algorithm=self._algorithm,
                headers={"kid": self._key_id, "typ": "JWT"},
            )
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            # The key's text is never part of the message.
            raise SourceError(
                f"auth.private_key: not a usable {self._algorithm} private key "
                f"({type(exc).__name__})"
            ) from None

    def token_request(self) -> httpx.Request:
        """The client-credentials request to the token endpoint."""
        return httpx.Request(
            "POST",
            self._token_url,
            data={
                "grant_type": "client_credentials",
                "scope": self._scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self.assertion(),
            },
            headers={"Accept": "application/json"},
        )

    def _take(self, response: httpx.Response) -> None:
        """Keep the access token of a token response, or raise `SourceError` saying why."""
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != httpx.codes.OK:
            error = body.get("error") if isinstance(body, dict) else None
            detail = f" ({error})" if isinstance(error, str) else ""
            raise SourceError(
                f"the token endpoint refused the client: HTTP {response.status_code}{detail}; "
                "check auth.client_id, auth.key_id, auth.scope and that the server has the "
                "public key"
            )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError("the token endpoint answered without an access_token")
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 300.0
        self._token = SecretStr(token)
        self._expires_at = self._clock() + max(seconds - _RENEW_MARGIN_SECONDS, 0.0)
        self.tokens_fetched += 1

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        fresh = False
        if self._token is None or self._clock() >= self._expires_at:
            self._take((yield self.token_request()))
            fresh = True
        assert self._token is not None
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        response = yield request
        if response.status_code == httpx.codes.UNAUTHORIZED and not fresh:
            # The cached token was revoked or expired early: one new token, one more try.
            self._take((yield self.token_request()))
            request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
            yield request
