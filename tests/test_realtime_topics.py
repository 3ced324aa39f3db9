"""Topic parsing, group names and authorisation (CONTRACT section 5)."""

from __future__ import annotations

import pytest
from channels.layers import BaseChannelLayer
from django.contrib.auth.models import Permission

from realtime.topics import RejectReason, TopicError, TopicKind, authorize_topics, parse_topic
from strategies.models import Strategy

LEGAL = [
    "orders",
    "positions",
    "strategies",
    "user:42:orders",
    "user:42:positions",
    "user:42:strategies",
    "strategy:7",
    "strategy:7:orders",
    "market:BTC-USD",
    "market:BRK.B",
    "market:ES_F",
    "market:" + "A" * 32,
    "user:9223372036854775807:orders",
]


@pytest.mark.parametrize("name", LEGAL)
def test_every_legal_topic_maps_to_a_valid_unique_group_name(name):
    topic = parse_topic(name)
    assert BaseChannelLayer().require_valid_group_name(topic.group)
    assert len(topic.group) < 100


def test_group_names_are_one_to_one():
    groups = {parse_topic(name).group for name in LEGAL}
    assert len(groups) == len(LEGAL)


def test_market_topics_are_canonically_upper_case():
    topic = parse_topic("market:btc-usd")
    assert topic.name == "market:BTC-USD"
    assert topic.kind is TopicKind.MARKET
    assert topic.symbol == "BTC-USD"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", RejectReason.INVALID_TOPIC),
        (5, RejectReason.INVALID_TOPIC),
        (None, RejectReason.INVALID_TOPIC),
        ("user:abc:orders", RejectReason.INVALID_TOPIC),
        ("user:0:orders", RejectReason.INVALID_TOPIC),
        ("user:-1:orders", RejectReason.INVALID_TOPIC),
        ("user:42", RejectReason.INVALID_TOPIC),
        ("strategy:x", RejectReason.INVALID_TOPIC),
        ("market:", RejectReason.INVALID_TOPIC),
        ("market:a b", RejectReason.INVALID_TOPIC),
        ("market:" + "A" * 33, RejectReason.INVALID_TOPIC),
        ("orders ", RejectReason.INVALID_TOPIC),
        ("x" * 101, RejectReason.INVALID_TOPIC),
        ("trades", RejectReason.UNKNOWN_TOPIC),
        ("user:42:trades", RejectReason.UNKNOWN_TOPIC),
        ("strategy:7:positions", RejectReason.UNKNOWN_TOPIC),
        ("account:1", RejectReason.UNKNOWN_TOPIC),
    ],
)
def test_malformed_and_unknown_topics_are_refused_with_their_reason(name, reason):
    with pytest.raises(TopicError) as refused:
        parse_topic(name)
    assert refused.value.reason is reason


def _decide(user, *names):
    return authorize_topics(user, [parse_topic(name) for name in names])


@pytest.mark.django_db
def test_a_trader_may_subscribe_to_own_topics_and_market_data_only(trader, other_trader):
    own = [f"user:{trader.pk}:{kind}" for kind in ("orders", "positions", "strategies")]
    others = [f"user:{other_trader.pk}:{kind}" for kind in ("orders", "positions", "strategies")]
    decisions = _decide(trader, *own, *others, "orders", "positions", "strategies", "market:X")
    assert {name for name, reason in decisions.items() if reason is None} == {*own, "market:X"}


@pytest.mark.django_db
def test_strategy_topics_belong_to_the_owner(trader, other_trader):
    mine = Strategy.objects.create(owner=trader, name="mine")
    theirs = Strategy.objects.create(owner=other_trader, name="theirs")
    decisions = _decide(
        trader,
        f"strategy:{mine.pk}",
        f"strategy:{mine.pk}:orders",
        f"strategy:{theirs.pk}",
        f"strategy:{theirs.pk}:orders",
    )
    assert decisions == {
        f"strategy:{mine.pk}": None,
        f"strategy:{mine.pk}:orders": None,
        f"strategy:{theirs.pk}": RejectReason.FORBIDDEN,
        f"strategy:{theirs.pk}:orders": RejectReason.FORBIDDEN,
    }


@pytest.mark.django_db
def test_a_missing_strategy_looks_exactly_like_someone_elses(trader, other_trader):
    theirs = Strategy.objects.create(owner=other_trader, name="theirs")
    decisions = _decide(trader, f"strategy:{theirs.pk}", "strategy:999999")
    assert (
        decisions[f"strategy:{theirs.pk}"] == decisions["strategy:999999"] == RejectReason.FORBIDDEN
    )


@pytest.mark.django_db
def test_staff_hold_every_topic(staff, trader):
    strategy = Strategy.objects.create(owner=trader, name="s")
    names = [
        "orders",
        "positions",
        "strategies",
        f"user:{trader.pk}:orders",
        f"strategy:{strategy.pk}",
        f"strategy:{strategy.pk}:orders",
    ]
    assert all(reason is None for reason in _decide(staff, *names).values())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("permission", "granted", "still_refused"),
    [
        (
            "orders.view_order",
            ["orders", "user:{other}:orders", "strategy:{strategy}:orders"],
            ["positions", "strategies", "strategy:{strategy}"],
        ),
        ("positions.view_position", ["positions", "user:{other}:positions"], ["orders"]),
        (
            "strategies.view_strategy",
            ["strategies", "user:{other}:strategies", "strategy:{strategy}"],
            ["orders", "strategy:{strategy}:orders"],
        ),
    ],
)
def test_permissions_grant_the_matching_topics(
    trader, other_trader, permission, granted, still_refused
):
    strategy = Strategy.objects.create(owner=other_trader, name="theirs")
    app_label, codename = permission.split(".")
    trader.user_permissions.add(
        Permission.objects.get(codename=codename, content_type__app_label=app_label)
    )
    fill = {"other": other_trader.pk, "strategy": strategy.pk}
    decisions = _decide(trader, *(n.format(**fill) for n in granted + still_refused))
    assert all(decisions[n.format(**fill)] is None for n in granted)
    assert all(decisions[n.format(**fill)] is RejectReason.FORBIDDEN for n in still_refused)


@pytest.mark.django_db
def test_an_inactive_user_holds_nothing_even_through_a_stale_user_object(trader):
    type(trader).objects.filter(pk=trader.pk).update(
        is_active=False
    )  # the object still says active
    assert _decide(trader, "market:X", f"user:{trader.pk}:orders") == {
        "market:X": RejectReason.FORBIDDEN,
        f"user:{trader.pk}:orders": RejectReason.FORBIDDEN,
    }


@pytest.mark.django_db
def test_a_demoted_staff_user_is_judged_by_the_database_not_the_connections_user_object(staff):
    assert _decide(staff, "orders") == {"orders": None}
    type(staff).objects.filter(pk=staff.pk).update(is_staff=False)  # demoted in another process
    assert staff.is_staff  # the long-lived object a connection holds
    assert _decide(staff, "orders") == {"orders": RejectReason.FORBIDDEN}


@pytest.mark.django_db
def test_a_deleted_user_holds_nothing(trader):
    type(trader).objects.filter(pk=trader.pk).delete()
    assert _decide(trader, "market:X") == {"market:X": RejectReason.FORBIDDEN}
