"""The soak benchmark's verdicts (bench.soak) fail when their fault is there.

Each verdict is fed what a faulty server would leave (a gap in a stream, a resume told to reset,
a subscriber that had to reconnect, rows left behind, memory growing in the second half), next
to the clean case, so a verdict that always passes cannot hide here. The load generator's parts
that only the soak uses (tracks of several topics, dropping resumed tracks) are tested too.
"""

from __future__ import annotations

from typing import Any

from bench import soak, storm
from bench.loadgen import Leg, Track, Worker

EPOCH = "h7Kp2abc"


def tick(topic: str, seq: int) -> bytes:
    symbol = topic.split(":", 1)[1]
    return (
        f'{{"type":"MARKET_DATA","topic":"{topic}","seq":{seq},"epoch":"{EPOCH}",'
        f'"timestamp":"2026-11-29T01:00:00.000Z","payload":{{"symbol":"{symbol}",'
        f'"last":"100.00","volume":"{1000 + seq:.6f}"}}}}'
    ).encode()


def subscribe(track: Track, position: int, *, since: int | None = None, reset: str = "") -> None:
    track.legs.append(Leg(since))
    track.replied(
        {
            "positions": {track.topic: {"epoch": EPOCH, "seq": position}},
            "recovered": [track.topic] if since is not None and not reset else [],
            "reset": [{"topic": track.topic, "reason": reset}] if reset else [],
        },
        1.0,
    )


def receive(track: Track, seqs: range | list[int]) -> None:
    for seq in seqs:
        track.received(tick(track.topic, seq), 1.0)


def drop(track: Track) -> None:
    leg = track.legs[-1]
    leg.lost_at, leg.index_at_loss = 2.0, len(track.seqs)


def collected(*tracks: Track, final: int) -> dict[str, Any]:
    return {"tracks": [t.summary(final) for t in tracks], "closes": {}, "errors": {}}


def steady_track(seqs: range | list[int] = range(6, 21)) -> Track:
    track = Track(0, None, "market:SOAK0")
    subscribe(track, 5)
    receive(track, seqs)
    return track


def resumer_track(*, reset: str = "") -> Track:
    """Subscribed at 0, got 1..10, dropped, resumed from 10 (the head then 15), got 11..20."""
    track = Track(1, None, "market:SOAK0")
    subscribe(track, 0)
    receive(track, range(1, 11))
    drop(track)
    subscribe(track, 15, since=10, reset=reset)
    receive(track, range(16, 21) if reset else range(11, 21))
    return track


def result(**changes: Any) -> dict[str, Any]:
    """A soak's result as the run leaves it, clean unless `changes` say otherwise."""
    document: dict[str, Any] = {
        "params": {"quick": False, "minutes": 1.0},
        "steady": soak.check_tracks(collected(steady_track(), final=20)),
        "resumers": soak.check_tracks(collected(resumer_track(), final=20)),
        "start": {"fds": 17, "tasks": 7, "rows": 0},
        "end": {"fds": 18, "tasks": 7, "rows": 0},
        "summary": {"rss_growth_kib_per_min_second_half": 12.0},
        "server_log": {"lines": 0, "errors": 0, "top": []},
        "publisher": {"statuses": {"202": 20}, "errors": {}},
        "churn": {"failures": {}, "error": None},
    }
    document.update(changes)
    return document


def met(document: dict[str, Any], prefix: str) -> bool | None:
    (verdict,) = [t for t in soak.verdicts(document) if t["target"].startswith(prefix)]
    return verdict["met"]


def test_a_clean_run_meets_every_verdict():
    not_met = [t["target"] for t in soak.verdicts(result()) if t["met"] is not True]
    assert not_met == ["soak: server log warnings"]  # reported, never judged


def test_a_gap_in_a_steady_subscribers_stream_fails_the_loss_verdict():
    gap = soak.check_tracks(collected(steady_track([s for s in range(6, 21) if s != 9]), final=20))
    assert gap["lost"] == 1
    assert met(result(steady=gap), "soak: steady subscribers") is False


def test_a_steady_subscriber_missing_the_topics_tail_fails_the_loss_verdict():
    short = soak.check_tracks(collected(steady_track(), final=23))
    assert short["lost"] == 3
    assert met(result(steady=short), "soak: steady subscribers") is False


def test_a_steady_subscriber_that_had_to_reconnect_fails_even_without_a_loss():
    reconnected = soak.check_tracks(collected(resumer_track(), final=20))
    assert reconnected["lost"] == 0 and reconnected["reconnected"] == 1
    assert met(result(steady=reconnected), "soak: steady subscribers") is False


def test_a_resume_told_to_reset_fails_the_recovered_and_the_loss_verdicts():
    reset = soak.check_tracks(collected(resumer_track(reset="expired"), final=20))
    assert reset["resumes"] == 1 and reset["recovered"] == 0 and reset["resets"] == {"expired": 1}
    assert met(result(resumers=reset), "soak: resumes recovered") is False
    assert met(result(resumers=reset), "soak: resumers, messages lost") is False


def test_no_resume_at_all_is_not_a_pass():
    none = soak.check_tracks(collected(steady_track(), final=20))
    assert met(result(resumers=none), "soak: resumes recovered") is False


def test_rows_or_tasks_left_after_the_clients_fail_their_verdicts():
    left = {"fds": 18, "tasks": 7 + 5, "rows": 1}
    assert met(result(end=left), "soak: connection rows") is False
    assert met(result(end=left), "soak: asyncio tasks") is False
    assert met(result(end=left), "soak: open fds") is True


def test_an_error_in_the_server_log_fails_and_a_warning_is_reported(tmp_path):
    log = tmp_path / "daphne.log"
    log.write_text(
        "2026-11-29 08:13:14,146 WARNING realtime.outbound: Send failed on 99939f466ec94f1d\n"
        "2026-11-29 08:13:14,147 WARNING realtime.outbound: Send failed on 2e9e92a76d404a7e\n"
    )
    warned = storm.log_summary(log)
    assert warned["lines"] == 2 and warned["errors"] == 0
    assert warned["top"][0][0] == 2  # one kind of line, whatever the connection's id
    assert met(result(server_log=warned), "soak: server log errors") is True
    assert met(result(server_log=warned), "soak: server log warnings") is None
    with log.open("a") as out:
        out.write("2026-11-29 08:13:15,000 ERROR django.request: Internal Server Error\n")
    assert met(result(server_log=storm.log_summary(log)), "soak: server log errors") is False


def samples(second_half_kib_per_s: float) -> list[dict[str, Any]]:
    """A minute's samples every 5 s: memory rising fast for 30 s (warm-up), then at the given
    rate."""
    rows = []
    for t in range(0, 61, 5):
        rss = 100_000 + 300 * min(t, 30) + second_half_kib_per_s * max(0, t - 30)
        rows.append({"t": float(t), "phase": "run", "rss_kib": rss, "allocated_blocks": None})
        rows[-1] |= dict.fromkeys(("fds", "threads", "tasks", "rows", "clients_open"), 1)
    return rows


def summarized(rss_per_s: float, *, quick: bool = False) -> dict[str, Any]:
    document = result(
        params={"quick": quick, "minutes": 1.0},
        samples=samples(rss_per_s),
        run_started_t=0.0,
        heads={"market:SOAK0": {"epoch": EPOCH, "seq": 20}},
        publisher={"statuses": {"202": 20}, "errors": {}, "published": 20},
        churn={"failures": {}, "error": None, "opened": 0},
        start={"fds": 1, "tasks": 1, "rows": 0, "rss_kib": 100_000},
        end={"fds": 1, "tasks": 1, "rows": 0, "rss_kib": 110_000},
    )
    document["summary"] = soak.summarize(document)
    return document


def test_memory_growth_is_judged_on_the_second_half_only():
    plateau = summarized(0.0)
    assert plateau["summary"]["rss_growth_kib_per_min_second_half"] == 0.0  # warm-up ignored
    assert met(plateau, "soak: RSS growth") is True
    leak = summarized(20.0)  # 1,200 KiB a minute
    assert leak["summary"]["rss_growth_kib_per_min_second_half"] == 1200.0
    assert met(leak, "soak: RSS growth") is False


def test_a_quick_runs_memory_growth_is_reported_not_judged():
    assert met(summarized(20.0, quick=True), "soak: RSS growth") is None


def test_tracks_of_several_topics_are_checked_against_their_own_topics_last_seq():
    worker = Worker(0)
    worker.stream_setup([(0, None, "market:A"), (1, None, "market:B")])
    a, b = worker.tracks
    subscribe(a, 0)
    receive(a, range(1, 6))
    subscribe(b, 0)
    receive(b, range(1, 4))
    tracks = worker.stream_collect({"market:A": 5, "market:B": 3})["tracks"]
    assert [t["legs"][0]["exact"] for t in tracks] == [True, True]
    tracks = worker.stream_collect({"market:A": 5, "market:B": 4})["tracks"]
    assert [t["legs"][0]["missing"] for t in tracks] == [0, 1]


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_only_resumed_tracks_are_dropped():
    worker = Worker(0)
    worker.stream_setup([(0, None, "market:A"), (1, None, "market:A"), (2, None, "market:A")])
    resumed, replaying, waiting = worker.tracks
    for track in worker.tracks:
        track.client = FakeClient()  # type: ignore[assignment]
    subscribe(resumed, 0)
    receive(resumed, range(1, 4))
    subscribe(replaying, 0)
    receive(replaying, range(1, 4))
    drop(replaying)
    subscribe(replaying, 8, since=3)  # its replay of 4..8 has not come yet
    assert worker.stream_drop(1.0) == {"dropped": 1}
    assert [t.client.closed for t in worker.tracks] == [True, False, False]  # type: ignore[union-attr]
    assert waiting.legs == []
