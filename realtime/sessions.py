"""Session revocation (CONTRACT section 13): close a user's connections everywhere with 4410 and
refuse every access token issued before that moment, at the handshake, in-band and on the API.

simplejwt's blacklist covers refresh tokens only: revoking blacklists the user's outstanding
refresh tokens through it, and records the moment (`SessionRevocation`); an access token is
refused when it was issued before that moment. When it was issued is its `auth_time` claim
(seconds with milliseconds: a password login adds it, and a refreshed access token inherits its
refresh token's) or else its `iat`, which simplejwt rounds down to the second, so such a token
issued in the very second of a revocation counts as before it. A new password login works at
once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.utils import timezone
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication as SimpleJWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.settings import api_settings

from realtime.protocol import CloseCode
from realtime.security import EventKind, record

logger = logging.getLogger(__name__)

REVOKED_MESSAGE = "The token was issued before this user's sessions were revoked; log in again"


class LoginSerializer(TokenObtainPairSerializer):
    """simplejwt's login, its tokens stamped with `auth_time` to the millisecond."""

    @classmethod
    def get_token(cls, user: Any) -> Any:
        token = super().get_token(user)
        token["auth_time"] = round(time.time(), 3)
        return token


def token_issued_at(token: Any) -> float:
    """When `token` was issued, in seconds since the epoch (see the module docstring)."""
    issued = token.get("auth_time")
    if isinstance(issued, int | float) and not isinstance(issued, bool):
        return float(issued)
    return float(token.get("iat", 0))


def revoked_at(user: Any) -> float | None:
    """When the user's sessions were last revoked (seconds since the epoch), or None."""
    try:
        revocation = user.session_revocation
    except (ObjectDoesNotExist, AttributeError):
        return None
    return float(revocation.revoked_at.timestamp())


def token_revoked(user: Any, token: Any) -> bool:
    """Whether `token` was issued before the user's sessions were revoked."""
    moment = revoked_at(user)
    return moment is not None and token_issued_at(token) < moment


class JWTAuthentication(SimpleJWTAuthentication):
    """simplejwt's authentication, also refusing tokens issued before a revocation; the user
    and their revocation are loaded in one query."""

    def get_user(self, validated_token: Any) -> Any:
        try:
            user_id = validated_token[api_settings.USER_ID_CLAIM]
        except KeyError as exc:
            raise InvalidToken("Token contained no recognizable user identification") from exc
        try:
            user = self.user_model.objects.select_related("session_revocation").get(
                **{api_settings.USER_ID_FIELD: user_id}
            )
        except self.user_model.DoesNotExist as exc:
            raise AuthenticationFailed("User not found", code="user_not_found") from exc
        if api_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        if token_revoked(user, validated_token):
            raise AuthenticationFailed(REVOKED_MESSAGE, code="token_revoked")
        return user


def user_sessions_revoke(*, user: Any, by: str, ip: str = "") -> int:
    """Revoke every session of `user`: tokens issued until now are refused, their refresh tokens
    blacklisted, and their connections on every server process closed with 4410 (after
    commit). Returns how many refresh tokens were blacklisted."""
    from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

    from realtime import publish
    from realtime.auth import user_cache
    from realtime.models import SessionRevocation

    now = timezone.now()
    with transaction.atomic():
        SessionRevocation.objects.update_or_create(
            user=user, defaults={"revoked_at": now, "revoked_by": by[:150]}
        )
        outstanding = list(
            OutstandingToken._default_manager.filter(
                user=user, expires_at__gt=now, blacklistedtoken=None
            )
        )
        BlacklistedToken._default_manager.bulk_create(
            [BlacklistedToken(token=token) for token in outstanding], ignore_conflicts=True
        )

        def close_connections() -> None:
            user_cache.forget([user.pk])
            publish.disconnect(
                user_ids=[user.pk],
                code=CloseCode.SESSIONS_REVOKED,
                reason="sessions revoked",
            )

        transaction.on_commit(close_connections, robust=True)
    record(
        EventKind.SESSIONS_REVOKED,
        ip=ip,
        user_id=user.pk,
        username=user.get_username(),
        detail=f"by {by}; {len(outstanding)} refresh token(s) blacklisted",
    )
    logger.warning("Sessions of user %s revoked by %s", user.get_username(), by)
    return len(outstanding)


class RevocableJWTScheme(SimpleJWTScheme):
    """The OpenAPI description of JWTAuthentication: simplejwt's bearer scheme (`jwtAuth`)."""

    target_class = "realtime.sessions.JWTAuthentication"
