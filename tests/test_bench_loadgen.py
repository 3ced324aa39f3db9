"""The reconnect-storm benchmark's loss check (bench.loadgen.Track) counts what it must.

The storm's "zero lost" is only as good as this check, so it is fed streams with a gap, a
duplicate, a message of another epoch and a reset, as a server would send them.
"""

from __future__ import annotations

import pytest

from bench.loadgen import Leg, Track

TOPIC = "market:BENCH"
EPOCH = "h7Kp2abc"


def tick(seq: int, epoch: str = EPOCH) -> bytes:
    return (
        f'{{"type":"MARKET_DATA","topic":"{TOPIC}","seq":{seq},"epoch":"{epoch}",'
        f'"timestamp":"2026-11-29T01:00:00.000Z","payload":{{"symbol":"BENCH",'
        f'"last":"100.00","volume":"{1000 + seq:.6f}"}}}}'
    ).encode()


def subscribed(track: Track, position: int, *, since: int | None, at: float, **extra) -> None:
    track.legs.append(Leg(since))
    payload = {
        "topics": [TOPIC],
        "rejected": [],
        "positions": {TOPIC: {"epoch": EPOCH, "seq": position}},
        "recovered": [TOPIC] if since is not None and not extra.get("reset") else [],
        "reset": [{"topic": TOPIC, "reason": extra["reset"]}] if extra.get("reset") else [],
    }
    track.replied(payload, at)


def lose(track: Track, at: float) -> None:
    leg = track.legs[-1]
    leg.lost_at, leg.index_at_loss = at, len(track.seqs)


def storm(track: Track, resumed: list[int], *, position: int) -> dict:
    """A track that had 1..10 on its first connection, lost it, and resumed from 10."""
    subscribed(track, 0, since=None, at=1.0)
    for seq in range(1, 11):
        track.received(tick(seq), 1.0 + seq / 100)
    lose(track, 2.0)
    subscribed(track, position, since=10, at=3.0)
    for number, seq in enumerate(resumed):
        track.received(tick(seq), 3.0 + number / 1000)
    return track.summary(final=max(resumed))


def test_an_exact_resume_is_exact_and_says_when_it_caught_up():
    summary = storm(Track(0, None, TOPIC), list(range(11, 31)), position=25)
    first, resumed = summary["legs"]
    assert first["exact"] and first["missing"] == 0 and first["last_seq"] == 10
    assert resumed["exact"]
    assert (resumed["missing"], resumed["duplicates"], resumed["out_of_order"]) == (0, 0, 0)
    assert resumed["missed"] == 15 and resumed["replayed"] == 15
    assert resumed["caught_up_at"] == 3.0 + 14 / 1000  # the receipt of seq 25, the position
    assert resumed["first_live_at"] == 3.0 + 15 / 1000  # seq 26
    assert summary["bad_epochs"] == 0


def test_a_gap_in_the_replay_is_counted_as_lost():
    seqs = [s for s in range(11, 31) if s != 17]
    resumed = storm(Track(0, None, TOPIC), seqs, position=25)["legs"][1]
    assert resumed["missing"] == 1 and not resumed["exact"]


def test_a_duplicate_and_a_reordering_are_counted():
    seqs = [*range(11, 20), 19, 21, 20, *range(22, 31)]
    resumed = storm(Track(0, None, TOPIC), seqs, position=25)["legs"][1]
    assert resumed["duplicates"] == 1
    assert resumed["out_of_order"] == 2  # 19 after 19, 20 after 21
    assert resumed["missing"] == 0 and not resumed["exact"]


def test_a_missing_tail_is_lost_against_the_topics_last_seq():
    track = Track(0, None, TOPIC)
    storm(track, list(range(11, 31)), position=25)
    resumed = track.summary(final=33)["legs"][1]
    assert resumed["missing"] == 3 and not resumed["exact"]


def test_a_reset_without_replay_is_lost_and_never_caught_up():
    track = Track(0, None, TOPIC)
    subscribed(track, 0, since=None, at=1.0)
    for seq in range(1, 11):
        track.received(tick(seq), 1.0)
    lose(track, 2.0)
    subscribed(track, 25, since=10, at=3.0, reset="expired")
    for seq in range(26, 31):  # live only: 11..25 never came
        track.received(tick(seq), 3.5)
    resumed = track.summary(final=30)["legs"][1]
    assert resumed["reset"] == "expired" and not resumed["recovered"]
    assert resumed["missing"] == 15
    assert resumed["caught_up_at"] is None
    assert not track.resumed()


def test_a_message_of_another_epoch_is_counted():
    track = Track(0, None, TOPIC)
    subscribed(track, 0, since=None, at=1.0)
    track.received(tick(1), 1.1)
    track.received(tick(2, epoch="other"), 1.2)
    assert track.summary(final=2)["bad_epochs"] == 1


def test_repeated_runs_report_each_target_as_the_median_run_with_its_range():
    from bench.__main__ import combine_targets
    from bench.common import target

    def run(p99: float | None, rate: float) -> list[dict]:
        return [
            target("fan-out p99 ratio", p99, "<= 1.2", p99 is not None and p99 <= 1.2),
            target("deliveries ratio", rate, ">= 0.9", rate >= 0.9),
        ]

    combined = combine_targets([run(1.5, 0.95), run(1.1, 0.80), run(1.3, 0.92), run(None, 0.5)])
    p99, rate = combined
    # The median of the measured runs is one run's own figure, with that run's verdict.
    assert (p99["value"], p99["met"], p99["min"], p99["max"]) == (1.3, False, 1.1, 1.5)
    assert p99["values"] == [1.5, 1.1, 1.3, None] and p99["met_in_runs"] == 1
    assert (rate["value"], rate["met"], rate["min"], rate["max"]) == (0.8, False, 0.5, 0.95)
    assert rate["met_in_runs"] == 2
    # A target no run measured keeps its first run's entry, with every run's value.
    (unmeasured,) = combine_targets([[target("t", None, "x", None)]] * 3)
    assert unmeasured["value"] is None and unmeasured["values"] == [None, None, None]


def test_a_servers_cpu_is_read_to_well_under_a_clock_tick_threads_included():
    """A quick run's server may use less than one 10 ms tick; /proc/<pid>/stat would read 0.
    A child whose thread spins 60 ms and ends is read as at least that (an ended thread's time
    counts), to the nanosecond rather than in ticks, and an ended process reads as 0."""
    import subprocess
    import sys

    from bench import common

    spin = (
        "import threading, time, sys\n"
        "def spin():\n"
        "    end = time.thread_time() + 0.06\n"
        "    while time.thread_time() < end: pass\n"
        "t = threading.Thread(target=spin); t.start(); t.join()\n"
        "print('spun', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "spun\n"
        before_exit = common.cpu_seconds(child.pid)
    finally:
        child.communicate("")
    assert 0.06 <= before_exit < 1.0, before_exit
    assert round(before_exit * 1e9) % 10_000_000 != 0, "read in 10 ms ticks"
    assert common.cpu_seconds(child.pid) == 0.0


async def test_the_publisher_resends_once_when_a_kept_alive_connection_closes_under_a_request():
    """A server closes idle keep-alive connections; a request can cross the close, and the
    server never sees it. The publisher sends it again once on a new connection (the soak
    counted 6 such posts as failed in 12,044), but a new connection closed unanswered is an
    error, not retried."""
    import asyncio

    from bench.publisher import Publisher, ServerClosed

    answered: list[bytes] = []
    refuse_all = False

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            if served == 1 or refuse_all:  # the idle close crossing the second request
                writer.close()
                return
            served += 1
            answered.append(body)
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher("127.0.0.1", port, "/publish", token="t", max_connections=1)
    fresh = Publisher("127.0.0.1", port, "/publish", token="t", max_connections=1)
    try:
        assert await publisher.post(b"one") == (202, b"ok")
        assert await publisher.post(b"two") == (202, b"ok")  # resent on a new connection
        assert answered == [b"one", b"two"] and publisher.resent == 1
        refuse_all = True
        with pytest.raises(ServerClosed):
            await fresh.post(b"three")
        assert fresh.resent == 0 and answered == [b"one", b"two"]
    finally:
        publisher.close()
        fresh.close()
        server.close()
        await server.wait_closed()
