"""Set up a benchmark database and mint access tokens for its users; prints JSON on stdout.

    python -m bench.setup_db --users 100 --mint 1000 --staff-mint 1

migrates, creates a staff user and 100 users, and mints 1000 distinct access tokens cycling
over the users (token i is user i % 100's), plus one for the staff user. Without --users it
only mints, for the users already there (--user-index K: all for the K-th user). Configured
entirely by the environment (DATABASE_URL, DJANGO_SECRET_KEY, ...), like a server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import sys

STAFF_USERNAME = "bench-staff"
USER_PREFIX = "bench-user-"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=0, help="migrate and create this many users")
    parser.add_argument("--mint", type=int, default=0, help="tokens for the users, cycled")
    parser.add_argument("--staff-mint", type=int, default=0, help="tokens for the staff user")
    parser.add_argument("--user-index", type=int, help="mint for this one user (0: the first)")
    options = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingrt.settings")
    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import AccessToken

    user_model = get_user_model()
    if options.users:
        with contextlib.redirect_stdout(io.StringIO()):
            call_command("migrate", interactive=False, verbosity=0)
        user_model.objects.create_user(STAFF_USERNAME, is_staff=True, password=None)
        user_model.objects.bulk_create(
            [
                user_model(username=f"{USER_PREFIX}{i:05d}", password="!", is_active=True)
                for i in range(options.users)
            ]
        )
    staff = user_model.objects.get(username=STAFF_USERNAME)
    users = list(user_model.objects.filter(username__startswith=USER_PREFIX).order_by("pk"))
    owners = users if options.user_index is None else [users[options.user_index]]
    cycle = itertools.cycle(owners)
    json.dump(
        {
            "staff_id": staff.pk,
            "user_ids": [u.pk for u in users],
            "tokens": [str(AccessToken.for_user(next(cycle))) for _ in range(options.mint)],
            "staff_tokens": [str(AccessToken.for_user(staff)) for _ in range(options.staff_mint)],
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
