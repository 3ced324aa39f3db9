"""A user is loaded once for the connects that miss the cache together (realtime.auth.UserCache).

Real tokens and real queries; only the load is wrapped, to count it and, where a test needs a
load in progress, to hold it until released."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from rest_framework_simplejwt.tokens import AccessToken

from realtime import auth, sessions
from realtime.auth import TokenRejected, authenticate_token_async, user_cache
from tests.conftest import access_token_for

pytestmark = pytest.mark.django_db(transaction=True)


def _token(user, *, issued_at: float) -> str:
    token = AccessToken.for_user(user)
    token["auth_time"] = round(issued_at, 3)
    return str(token)


@pytest.fixture
def loads(monkeypatch):
    """Each load's token, in order; `loads.gate`, when set, holds every load until it opens."""
    real = auth._load_user_async

    class Loads(list):
        gate: asyncio.Event | None = None

    loads = Loads()

    async def counting(token):
        loads.append(token)
        if loads.gate is not None:
            await loads.gate.wait()
        return await real(token)

    monkeypatch.setattr(auth, "_load_user_async", counting)
    user_cache.clear()
    return loads


async def test_tokens_of_one_user_load_the_user_once_until_it_is_forgotten(trader, loads):
    for _ in range(3):
        token = await sync_to_async(access_token_for)(trader)
        assert (await authenticate_token_async(token)).user.pk == trader.pk
    assert len(loads) == 1
    user_cache.forget([trader.pk])
    await authenticate_token_async(token)
    assert len(loads) == 2


async def test_connects_that_miss_together_load_their_user_once(trader, loads):
    tokens = [_token(trader, issued_at=time.time()) for _ in range(20)]
    results = await asyncio.gather(*(authenticate_token_async(t) for t in tokens))
    assert [r.user.pk for r in results] == [trader.pk] * 20
    assert len(loads) == 1
    assert [r.token["auth_time"] for r in results] == [
        AccessToken(t)["auth_time"] for t in tokens
    ]  # each its own token


async def _tokens_around_a_revocation(user) -> tuple[str, str]:
    """One token issued before the user's sessions were revoked, one after; the cache empty."""
    before = _token(user, issued_at=time.time() - 60)
    await sync_to_async(sessions.user_sessions_revoke)(user=user, by="test")
    user_cache.clear()
    return before, _token(user, issued_at=time.time() + 1)


async def test_a_waiter_checks_its_own_token_against_the_revocation(trader, loads):
    """The user a load returns is shared; whether each token is revoked is checked apart."""
    before, after = await _tokens_around_a_revocation(trader)
    valid, revoked = await asyncio.gather(
        authenticate_token_async(after),
        authenticate_token_async(before),
        return_exceptions=True,
    )
    assert valid.user.pk == trader.pk
    assert isinstance(revoked, TokenRejected) and "revoked" in str(revoked)
    assert len(loads) == 1


async def test_when_the_shared_load_fails_its_waiters_load_for_themselves(trader, loads):
    before, after = await _tokens_around_a_revocation(trader)
    refused, valid = await asyncio.gather(
        authenticate_token_async(before),  # loads first, and is refused
        authenticate_token_async(after),
        return_exceptions=True,
    )
    assert isinstance(refused, TokenRejected)
    assert valid.user.pk == trader.pk
    assert len(loads) == 2


async def test_a_user_forgotten_while_loading_is_loaded_afresh_and_not_kept(trader, loads):
    """A revocation or deactivation forgets the user while a load may be reading the row as it
    was: neither its waiters nor the cache get what that load returns."""
    loads.gate = asyncio.Event()
    first = asyncio.create_task(authenticate_token_async(_token(trader, issued_at=time.time())))
    await asyncio.sleep(0)
    second = asyncio.create_task(authenticate_token_async(_token(trader, issued_at=time.time())))
    while len(loads) < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(loads) == 1  # the second waits for the first's load
    user_cache.forget([trader.pk])
    loads.gate.set()
    assert (await first).user.pk == trader.pk
    assert (await second).user.pk == trader.pk
    assert len(loads) == 2  # the second loaded afresh
    assert user_cache.get(str(trader.pk)) is not None  # what the fresh load returned


async def test_a_cancelled_connect_does_not_strand_those_waiting_on_its_load(trader, loads):
    loads.gate = asyncio.Event()
    first = asyncio.create_task(authenticate_token_async(_token(trader, issued_at=time.time())))
    while len(loads) < 1:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(authenticate_token_async(_token(trader, issued_at=time.time())))
    await asyncio.sleep(0.05)
    first.cancel()  # the client went away during its handshake
    await asyncio.sleep(0.05)
    loads.gate.set()
    assert (await second).user.pk == trader.pk
    assert first.cancelled()
    assert len(loads) == 2
