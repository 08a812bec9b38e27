"""JWT verification and per-resource roles (PROTOCOL.md section 0). Tokens are never logged."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import jwt

from .config import Settings
from .errors import AuthFailed, InvalidRequest

CANVAS_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Role(IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3


_ROLE_NAMES = {"read": Role.READ, "write": Role.WRITE, "admin": Role.ADMIN}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user: who, until when, and with which per-resource roles."""

    user_id: str
    name: str
    expires_at: float  # epoch seconds: the token's exp plus the leeway, when connections using it close
    perms: dict[str, Role] = field(default_factory=dict)

    def role_for(self, resource: str) -> Role:
        """The role on ``resource`` (e.g. ``canvas:123``); ``<type>:*`` matches every id of that type."""
        kind, _, _ = resource.partition(":")
        return max(self.perms.get(resource, Role.NONE), self.perms.get(f"{kind}:*", Role.NONE))

    def canvas_role(self, canvas_id: str) -> Role:
        return self.role_for(f"canvas:{canvas_id}")


def check_canvas_id(canvas_id: str) -> str:
    if not CANVAS_ID.match(canvas_id):
        raise InvalidRequest("canvas id must match ^[A-Za-z0-9_-]{1,64}$")
    return canvas_id


class Authenticator:
    """Verifies tokens with explicit algorithms; ``exp``, ``iat`` and ``sub`` are required."""

    def __init__(self, settings: Settings) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        hmac = self._algorithms[0].startswith("HS")
        key = (
            settings.jwt_secret.get_secret_value()
            if hmac and settings.jwt_secret
            else settings.jwt_public_key
        )
        if not key:
            raise ValueError("no JWT key configured")  # Settings' validator normally guarantees one
        self._key: str = key
        self._signing_key = key if hmac else None
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_s

    def verify(self, token: str | None) -> Principal:
        """Decode and check ``token``.

        Raises:
            AuthFailed: missing, malformed, wrong algorithm (including ``none``), bad signature,
                expired, or missing a required claim. The message never contains the token.
        """
        if not token:
            raise AuthFailed("missing token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthFailed("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthFailed(f"invalid token: {type(exc).__name__}") from exc
        # the leeway that let the token in also applies to how long it keeps a connection open:
        # otherwise a token accepted within the leeway would be closed with 4001 right away
        return _principal(claims, self._leeway)

    def issue(self, sub: str, name: str, perms: dict[str, str], *, ttl_s: int = 3600) -> str:
        """Sign a token (HS256 deployments only): used by ``maily-realtime token`` and the tests."""
        if self._signing_key is None:
            raise RuntimeError("this node verifies public-key tokens and cannot sign them")
        now = int(time.time())
        claims = {"sub": sub, "name": name, "iat": now, "exp": now + ttl_s, "perms": perms}
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._signing_key, algorithm=self._algorithms[0])


def _principal(claims: dict[str, Any], leeway_s: float) -> Principal:
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise AuthFailed("claim sub must be a non-empty string")
    raw_perms = claims.get("perms", {})
    if not isinstance(raw_perms, dict):
        raise AuthFailed("claim perms must be an object")
    perms = {}
    for resource, role in raw_perms.items():
        if isinstance(resource, str) and isinstance(role, str) and role in _ROLE_NAMES:
            perms[resource] = _ROLE_NAMES[role]
    name = claims.get("name")
    return Principal(
        user_id=sub,
        name=name if isinstance(name, str) and name else sub,
        expires_at=float(claims["exp"]) + leeway_s,
        perms=perms,
    )
