"""Per-topic positions and the client author's checklist (docs/PROTOCOL.md section 7.6).

No I/O here: the client feeds every server message in, and is told which to hand on and which
topics to resume. Rules, per topic:

* a message of another epoch, a seq jump, or a heartbeat position ahead: resume the topic
  (`since` = the position held, and the snapshot if it was asked for); until the reply only
  seq = held + 1 is applied. A filtered or throttled subscription skips seqs on purpose, so for
  it a jump is no gap and a heartbeat's position is simply taken (section 4.7).
* seq <= held: a duplicate, dropped.
* after a snapshot at S, an object's update whose `version` is not newer than the snapshot's
  is a change the snapshot already holds, dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .messages import (
    Event,
    Position,
    Recovered,
    Reset,
    Revoked,
    Snapshot,
    SubscribeReply,
    Update,
    object_key,
)

RETRYABLE_REJECTIONS = frozenset({"unavailable"})


def canonical_topic(topic: str) -> str:
    """The server's name for a topic: market symbols are upper case (section 5.2)."""
    if topic.startswith("market:"):
        return "market:" + topic[len("market:") :].upper()
    return topic


@dataclass
class TopicState:
    """What the client holds of one topic it wants."""

    topic: str
    snapshot: bool = True
    filter: dict[str, Any] | None = None
    throttle_ms: int | None = None
    presence: bool = False
    position: Position | None = None
    # Held on the current connection (its subscribe reply arrived and accepted it).
    held: bool = False
    # A resume was sent and its reply has not come yet.
    resuming: bool = False
    # Between a snapshot's first page and its last one.
    in_snapshot: bool = False
    # The versions of the objects in the last snapshot that no update has superseded yet.
    overlap: dict[Any, int] = field(default_factory=dict)

    @property
    def shaped(self) -> bool:
        """Filtered or throttled: its seqs skip on purpose."""
        return self.filter is not None or self.throttle_ms is not None

    def entry(self, *, resume: bool = True) -> dict[str, Any]:
        """The subscribe entry: resume from the position held, else (or on reset) the state."""
        entry: dict[str, Any] = {"topic": self.topic}
        if resume and self.position is not None:
            entry["since"] = self.position.to_wire()
        if self.snapshot:
            entry["snapshot"] = True
        if self.filter is not None:
            entry["filter"] = self.filter
        if self.throttle_ms is not None:
            entry["throttleMs"] = self.throttle_ms
        if self.presence:
            entry["presence"] = True
        return entry


class Tracker:
    """The topics a client wants, and what each message means for them."""

    def __init__(self) -> None:
        self.topics: dict[str, TopicState] = {}

    # --- what the client wants ---------------------------------------------------------------

    def want(
        self,
        topic: str,
        *,
        snapshot: bool = True,
        filter: dict[str, Any] | None = None,
        throttle_ms: int | None = None,
        presence: bool = False,
    ) -> TopicState:
        """Add a topic, or replace a held one's options (its position is kept)."""
        topic = canonical_topic(topic)
        state = self.topics.get(topic) or TopicState(topic)
        state.snapshot, state.filter = snapshot, filter
        state.throttle_ms, state.presence = throttle_ms, presence
        self.topics[topic] = state
        return state

    def forget(self, topic: str) -> None:
        self.topics.pop(canonical_topic(topic), None)

    def connection_lost(self) -> None:
        """A new connection holds nothing: every topic is resumed on it."""
        for state in self.topics.values():
            state.held = state.resuming = state.in_snapshot = False

    def resubscription(self) -> list[dict[str, Any]]:
        """The entries that resume every topic on a new connection (7.6 step 4)."""
        for state in self.topics.values():
            state.resuming = True
        return [state.entry() for state in self.topics.values()]

    def resume(self, topics: list[str]) -> list[dict[str, Any]]:
        """Entries to repair the given topics (marked as resuming); those already resuming are
        left out."""
        entries = []
        for topic in topics:
            state = self.topics.get(topic)
            if state is not None and not state.resuming:
                state.resuming = True
                entries.append(state.entry())
        return entries

    def resume_failed(self, topics: list[str]) -> None:
        """The resume request got no reply (an ERROR, a timeout): try again on the next sign."""
        for topic in topics:
            state = self.topics.get(topic)
            if state is not None:
                state.resuming = False

    # --- replies -----------------------------------------------------------------------------

    def subscribed(self, reply: SubscribeReply, requested: list[dict[str, Any]]) -> list[Event]:
        """Take a subscribe reply: positions, recoveries, resets and refusals.

        `requested` is what the request asked, to tell a resume from a first subscription.
        """
        asked = {entry["topic"]: entry for entry in requested}
        events: list[Event] = []
        for topic in reply.topics:
            state = self.topics.get(topic)
            if state is None:  # unsubscribed meanwhile
                continue
            state.held, state.resuming = True, False
            head = reply.positions.get(topic)
            entry = asked.get(topic, {})
            if topic in reply.recovered and state.position is not None:
                events.append(Recovered(topic, since=state.position, head=head or state.position))
                continue
            if head is not None:
                state.position = head
            state.overlap.clear()
            state.in_snapshot = False
            if topic in reply.reset:
                events.append(
                    Reset(
                        topic,
                        reply.reset[topic],
                        state.position or Position("", 0),
                        snapshot=bool(entry.get("snapshot")),
                    )
                )
        for rejection in reply.rejected:
            topic = rejection.topic
            if not isinstance(topic, str) or topic not in self.topics:
                continue
            state = self.topics[topic]
            state.resuming = False
            if rejection.reason in RETRYABLE_REJECTIONS:
                state.held = False
                continue
            was_held = state.held or state.position is not None
            del self.topics[topic]
            if was_held:
                events.append(Revoked(topic, rejection.reason))
        return events

    def revoked(self, topics: list[str], reason: str) -> list[Event]:
        """The server ended these subscriptions (section 4.6)."""
        events: list[Event] = []
        for topic in topics:
            if self.topics.pop(topic, None) is not None:
                events.append(Revoked(topic, reason))
        return events

    # --- the stream --------------------------------------------------------------------------

    def on_update(self, message: dict[str, Any]) -> tuple[Update | None, str | None]:
        """An update: the Update to hand on (None to drop it), and a topic to resume, if any."""
        state = self.topics.get(message.get("topic", ""))
        if state is None or not state.held or state.position is None:
            return None, None  # of a topic no longer wanted, or not yet acknowledged
        seq, epoch = message.get("seq"), message.get("epoch")
        if not isinstance(seq, int) or not isinstance(epoch, str):
            return None, None
        held = state.position
        if epoch != held.epoch:
            return None, self._needs_resume(state)  # the history was reset: 7.6 step 2
        if seq <= held.seq:
            return None, None  # a duplicate
        if seq > held.seq + 1 and not state.shaped:
            return None, self._needs_resume(state)  # a gap: do not apply, resume
        state.position = Position(epoch, seq)
        update = Update(
            type=message["type"],
            topic=state.topic,
            seq=seq,
            epoch=epoch,
            timestamp=str(message.get("timestamp", "")),
            payload=message.get("payload") or {},
        )
        if state.overlap and self._already_in_snapshot(state, update.payload):
            return None, None
        return update, None

    def on_snapshot(self, message: dict[str, Any]) -> Snapshot | None:
        state = self.topics.get(message.get("topic", ""))
        if state is None or not state.held:
            return None
        payload = message.get("payload") or {}
        snapshot = Snapshot(
            topic=state.topic,
            seq=int(message["seq"]),
            epoch=str(message["epoch"]),
            timestamp=str(message.get("timestamp", "")),
            items=list(payload.get("items", [])),
            last=bool(payload.get("last", True)),
        )
        if not state.in_snapshot:  # its first page
            state.overlap.clear()
        state.in_snapshot = not snapshot.last
        state.position = Position(snapshot.epoch, snapshot.seq)
        for item in snapshot.items:
            version = item.get("version")
            if isinstance(version, int):
                state.overlap[object_key(item)] = version
        return snapshot

    def on_heartbeat(self, positions: dict[str, Any]) -> list[str]:
        """Topics a heartbeat shows are behind: their last message was missed (7.6 step 3)."""
        behind = []
        for topic, value in positions.items():
            state = self.topics.get(topic)
            if state is None or not state.held or state.resuming or state.position is None:
                continue
            there = Position.from_wire(value)
            held = state.position
            if there.epoch == held.epoch and there.seq <= held.seq:
                continue
            if state.shaped and there.epoch == held.epoch:
                state.position = there  # filtered out or throttled: nothing was lost (4.7)
                continue
            if self._needs_resume(state):
                behind.append(topic)
        return behind

    # --- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _needs_resume(state: TopicState) -> str | None:
        """The topic, unless a resume of it is already on its way."""
        if state.resuming:
            return None
        return state.topic

    @staticmethod
    def _already_in_snapshot(state: TopicState, payload: dict[str, Any]) -> bool:
        """An update of an object that the last snapshot holds at this version or a later one;
        once a newer one arrives, seq order is version order again (7.2), so it is let go."""
        key = object_key(payload)
        version = payload.get("version")
        if key not in state.overlap or not isinstance(version, int):
            return False
        if version <= state.overlap[key]:
            return True
        del state.overlap[key]
        return False
