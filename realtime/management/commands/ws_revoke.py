"""`manage.py ws_revoke --user NAME`: revoke a user's sessions (close 4410, refuse older tokens)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from realtime import publish
from realtime.sessions import user_sessions_revoke


class Command(BaseCommand):
    help = (
        "Revoke every session of a user: their connections on every server process close with "
        "4410, access tokens issued before now are refused (handshake, in-band, REST API) and "
        "their refresh tokens are blacklisted; a new login works at once. Needs the shared "
        "(Redis) channel layer: set REDIS_URL."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--user", metavar="NAME", required=True, help="the username")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def handle(self, *args: Any, **options: Any) -> None:
        if not publish.layer_is_shared():
            raise CommandError(
                "ws_revoke must reach the server processes through a shared channel layer, and "
                "none is configured: this process has only the in-process layer. Set REDIS_URL "
                "(the same as the servers') and run it again; or use the admin's 'Revoke "
                "sessions' action on the Users list, which runs inside a server."
            )
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user is named {options['user']!r}.")
        blacklisted = user_sessions_revoke(user=user, by="manage.py ws_revoke")
        if options["json"]:
            summary = {"user": user.get_username(), "code": 4410, "refreshTokens": blacklisted}
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(
                f"Revoked the sessions of {user.get_username()}: their connections close with "
                f"4410, {blacklisted} refresh token(s) blacklisted, older access tokens refused."
            )
