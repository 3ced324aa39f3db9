"""The JavaScript client (realtime/static/realtime/client.js), run in headless Chromium.

Most tests drive it against a scripted fake WebSocket in the page, to control close codes and
timing exactly; the last ones run it against a real Daphne (token refresh, a 4401 during a
refresh outage, signing out, MessagePack against JSON, presence of two users).
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from rest_framework_simplejwt.tokens import RefreshToken

from tests.browser import open_page, open_server_page, serve_blank_page
from tests.live import live_server
from tests.rest import short_token
from tests.test_delivery import post_order

CLIENT_JS = Path(__file__).resolve().parent.parent / "realtime/static/realtime/client.js"
FAKE_ORIGIN = "http://127.0.0.1:9"  # never contacted: every request to it is answered in-page

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

# A fake server in the page: FakeWebSocket.server answers AUTHENTICATION, SUBSCRIPTION and
# HEARTBEAT like the real one unless told to stay silent or to reject. It keeps topics as the
# server does (docs/PROTOCOL.md section 7): a seq per topic and epoch, a bounded history that
# answers `since` with a replay (`recovered`) or a `reset`, a state sent as SNAPSHOT pages, and
# HEARTBEAT positions; `lose` drops a topic's next deliveries (kept in the history) to make gaps.
# Subscriptions keep their `filter` (section 4.7: filtered-out messages take seqs), `presence`
# queries are answered from `members`, and the socket speaks MessagePack when the client offers
# it and the server's `subprotocols` include it (section 3.3). Its clock is `clockOffsetMs`
# ahead of the page's. Like a browser's, a socket's close() fires onclose a moment later.
HARNESS = """
import * as rt from "/client.js";
import * as msgpack from "/vendor/msgpack/index.mjs";

class FakeWebSocket {
  static sockets = [];
  static server = null;
  constructor(url, protocols = []) {
    this.url = url;
    this.protocols = typeof protocols === "string" ? [protocols] : protocols;
    this.protocol = "";
    this.binaryType = "blob";
    this.readyState = 0;
    this.sent = [];
    this.frames = [];  // the kind of each frame sent: "text" or "binary"
    this.received = [];
    this.topics = new Set();
    this.closedWith = null;
    FakeWebSocket.sockets.push(this);
    const server = FakeWebSocket.server;
    if (server && !server.refuseConnections && !server.stallConnections) {
      setTimeout(() => this.open(), 0);
    } else if (server && server.refuseConnections) {  // as a refused handshake: 1006, never open
      setTimeout(() => this.drop(1006), 0);
    }
  }
  open() {
    if (this.readyState !== 0) return;
    // The server's choice among the offered subprotocols (PROTOCOL 3.3), if it speaks any.
    const speaks = FakeWebSocket.server.subprotocols;
    this.protocol = speaks.find((name) => this.protocols.includes(name)) ?? "";
    this.readyState = 1;
    this.onopen?.({});
    if (this.url.includes("token=")) FakeWebSocket.server.authenticate(this, undefined);
  }
  get msgpack() { return this.protocol === "tradingrt.msgpack"; }
  send(data) {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    const binary = typeof data !== "string";
    this.frames.push(binary ? "binary" : "text");
    const message = binary ? msgpack.decode(data) : JSON.parse(data);
    this.sent.push(message);
    if (FakeWebSocket.server) setTimeout(() => FakeWebSocket.server.handle(this, message), 0);
  }
  // As a browser's: closing, then the close event once the closing handshake is done.
  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.closedWith = code;
    setTimeout(() => {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: true });
    }, 0);
  }
  receive(message) {
    if (this.readyState !== 1) return;
    const now = FakeWebSocket.server ? FakeWebSocket.server.now() : new Date();
    const full = { timestamp: now.toISOString(), ...message };
    this.received.push(full);
    if (this.msgpack) {
      const bytes = msgpack.encode(full);
      const data = this.binaryType === "arraybuffer"
        ? bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
        : new Blob([bytes]);
      this.onmessage?.({ data });
    } else {
      this.onmessage?.({ data: JSON.stringify(full) });
    }
  }
  drop(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
  sentOfType(type) { return this.sent.filter((m) => m.type === type); }
  subscribeEntries() { return this.sentOfType("SUBSCRIPTION").map((m) => m.payload.topics); }
}

const UPDATE_KINDS = { ORDER_UPDATE: "orders", POSITION_UPDATE: "positions" };

function makeServer({ expiresInMs = 600000, reject = [], silent = [], historySize = 100,
                      pageSize = 2, noSnapshots = false, pageDelayMs = 0,
                      subprotocols = ["tradingrt.msgpack", "tradingrt.json"],
                      unavailable = [], clockOffsetMs = 0, members = {} } = {}) {
  return {
    expiresInMs, reject: new Set(reject), silent: new Set(silent), refuseConnections: false,
    stallConnections: false, subprotocols, unavailable: new Set(unavailable), clockOffsetMs,
    members, closeAfterSubscribe: null, refusedTokens: new Set(["bad"]),
    now() { return new Date(Date.now() + this.clockOffsetMs); },
    historySize, pageSize, noSnapshots, pageDelayMs, state: new Map(),
    authenticate(ws, id) {
      ws.receive({ type: "AUTHENTICATION", id, payload: {
        status: "authenticated", userId: 7, username: "alice",
        connectionId: `conn-${FakeWebSocket.sockets.indexOf(ws)}`,
        expiresAt: new Date(this.now().getTime() + this.expiresInMs).toISOString() } });
    },
    topic(name) {
      if (!this.state.has(name)) {
        this.state.set(name, { epoch: "e1", seq: 0, history: [], items: new Map(), lose: 0 });
      }
      return this.state.get(name);
    },
    // Publish an update: the next seq, into the history and the state, to every holder.
    publish(name, type, payload) {
      const topic = this.topic(name);
      topic.seq += 1;
      const message = { type, topic: name, seq: topic.seq, epoch: topic.epoch, payload };
      topic.history.push(message);
      if (topic.history.length > this.historySize) topic.history.shift();
      const { event, ...item } = payload;
      if (event === "deleted") topic.items.delete(item.id);
      else topic.items.set(item.id ?? item.symbol, item);
      if (topic.lose > 0) { topic.lose -= 1; return message; }
      for (const ws of FakeWebSocket.sockets) {
        if (ws.topics.has(name) && this.matches(ws, name, message)) ws.receive(message);
      }
      return message;
    },
    // A subscription's filter (PROTOCOL 4.7): every key matches one of its values.
    matches(ws, name, message) {
      const filter = (ws.filters || new Map()).get(name);
      if (!filter) return true;
      return Object.entries(filter).every(([key, wanted]) =>
        (Array.isArray(wanted) ? wanted : [wanted]).includes(message.payload[key]));
    },
    // The history is lost: a new epoch, seq from 1 again (the state stays, as in a database).
    newEpoch(name, epoch) {
      const topic = this.topic(name);
      Object.assign(topic, { epoch, seq: 0, history: [] });
    },
    heartbeat(ws, overrides = {}) {
      const positions = {};
      for (const name of ws.topics) {
        const { epoch, seq } = this.topic(name);
        positions[name] = { epoch, seq };
      }
      ws.receive({ type: "HEARTBEAT", payload: { serverTime: this.now().toISOString(),
                                                 positions: { ...positions, ...overrides } } });
    },
    subscribe(ws, message) {
      const reply = { action: "subscribed", topics: [], rejected: [], positions: {},
                      recovered: [], reset: [] };
      const after = [];
      for (const entry of message.payload.topics || []) {
        const options = typeof entry === "string" ? { topic: entry } : entry;
        const name = rt.canonicalTopic(options.topic);
        if (this.reject.has(name) || this.unavailable.has(name)) {
          const reason = this.reject.has(name) ? "forbidden" : "unavailable";
          reply.rejected.push({ topic: name, reason });
          continue;
        }
        const topic = this.topic(name);
        const held = ws.topics.has(name);
        ws.topics.add(name);
        ws.filters ??= new Map();
        ws.filters.set(name, options.filter);
        reply.topics.push(name);
        reply.positions[name] = { epoch: topic.epoch, seq: topic.seq };
        if (held && !options.since && !options.snapshot) continue;
        let recovered = false;
        if (options.since) {
          const oldest = topic.history.length ? topic.history[0].seq : topic.seq + 1;
          if (options.since.epoch !== topic.epoch) {
            reply.reset.push({ topic: name, reason: "epoch" });
          } else if (options.since.seq + 1 < oldest) {
            reply.reset.push({ topic: name, reason: "expired" });
          } else {
            recovered = true;
            reply.recovered.push(name);
            after.push(...topic.history.filter((m) => m.seq > options.since.seq
                                                      && this.matches(ws, name, m)));
          }
        }
        if (options.snapshot && !recovered && !this.noSnapshots) {
          const items = [...topic.items.values()];
          const pages = [];
          for (let i = 0; i < items.length || pages.length === 0; i += this.pageSize) {
            pages.push(items.slice(i, i + this.pageSize));
          }
          pages.forEach((page, index) => after.push({
            type: "SNAPSHOT", topic: name, seq: topic.seq, epoch: topic.epoch,
            payload: { items: page, last: index === pages.length - 1 } }));
        }
      }
      ws.receive({ type: "SUBSCRIPTION", id: message.id, payload: reply });
      if (this.closeAfterSubscribe) {  // a server that drops every connection after its login
        setTimeout(() => ws.drop(this.closeAfterSubscribe, "slow consumer"), 0);
        return;
      }
      if (!this.pageDelayMs) {
        for (const next of after) ws.receive(next);
      } else {  // one by one, so that live updates can come between them
        after.forEach((next, n) => setTimeout(() => ws.receive(next), (n + 1) * this.pageDelayMs));
      }
    },
    // The presence action: a page of `limit` members by userId, after `after[topic]`.
    presence(ws, message) {
      const { topics = [], limit = 1000, after = {} } = message.payload;
      const reply = { action: "presence", presence: {}, rejected: [] };
      for (const name of topics) {
        if (this.reject.has(name)) {
          reply.rejected.push({ topic: name, reason: "forbidden" });
          continue;
        }
        const members = (this.members[name] || []).filter((m) => m.userId > (after[name] ?? 0));
        reply.presence[name] = members.slice(0, limit);
        if (members.length > limit) {
          reply.next = { ...reply.next, [name]: members[limit - 1].userId };
        }
      }
      ws.receive({ type: "SUBSCRIPTION", id: message.id, payload: reply });
    },
    handle(ws, message) {
      if (this.silent.has(message.type) || ws.readyState !== 1) return;
      const reply = (type, payload) => ws.receive({ type, id: message.id, payload });
      if (message.type === "AUTHENTICATION") {
        if (this.refusedTokens.has(message.payload.token)) {
          reply("ERROR", { code: "unauthenticated", message: "The token was refused." });
        } else {
          this.authenticate(ws, message.id);
        }
      } else if (message.type === "SUBSCRIPTION" && message.payload.action === "subscribe") {
        if (this.silent.has("subscribe")) return;
        if (this.errorOnSubscribe) {
          reply("ERROR", { code: this.errorOnSubscribe, message: "refused" });
        } else {
          this.subscribe(ws, message);
        }
      } else if (message.type === "SUBSCRIPTION" && message.payload.action === "presence") {
        this.presence(ws, message);
      } else if (message.type === "SUBSCRIPTION") {
        const topics = (message.payload.topics || []).map(rt.canonicalTopic);
        for (const topic of topics) ws.topics.delete(topic);
        reply("SUBSCRIPTION", { action: "unsubscribed", topics, rejected: [] });
      } else if (message.type === "HEARTBEAT") {
        if (this.errorOnHeartbeat) {
          reply("ERROR", { code: this.errorOnHeartbeat, message: "slow down" });
        } else {
          const positions = {};
          for (const name of ws.topics) {
            const { epoch, seq } = this.topic(name);
            positions[name] = { epoch, seq };
          }
          reply("HEARTBEAT", { serverTime: this.now().toISOString(),
                               ...(ws.topics.size ? { positions } : {}) });
        }
      }
    },
  };
}

window.rt = rt;
window.FakeWebSocket = FakeWebSocket;
window.makeServer = makeServer;
window.sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
window.waitFor = async (predicate, timeoutMs = 3000) => {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${predicate}`);
    await sleep(5);
  }
};
// What a client passes on, in order: updates, snapshot pages, recoveries and resets.
window.track = (client) => {
  const events = [];
  client.on("ORDER_UPDATE", (m) => events.push(["update", m.topic, m.seq]));
  client.onSnapshot((e) => events.push(["snapshot", e.topic, e.seq, e.items.map((item) => item.id),
                                        e.first, e.last, e.reason]));
  client.onRecovered((e) => events.push(["recovered", e.topic, e.replayed, e.cause]));
  client.onReset((e) => events.push(["reset", e.topic, e.reason, e.snapshot, e.cause]));
  return events;
};
window.order = (id, version = 1) => ({ id, symbol: "AAPL", status: "NEW", version,
                                       event: version === 1 ? "created" : "updated" });
window.fakeClient = (options = {}) => new rt.RealtimeClient({
  url: "ws://server.test/ws", token: "t", WebSocket: FakeWebSocket, backoffBaseMs: 10,
  heartbeatIntervalMs: 0, ...options });
window.harnessReady = true;
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser_page():
    async with open_page("js-client") as page:
        yield page


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser_page):
    """A fresh page at a fake origin, with the client module and the fake server loaded."""

    async def serve_static(route):
        path = route.request.url.removeprefix(FAKE_ORIGIN + "/")
        body = (CLIENT_JS.parent / path).read_text()
        await route.fulfill(status=200, content_type="text/javascript", body=body)

    await browser_page.unroute_all()
    await browser_page.route(f"{FAKE_ORIGIN}/client.js", serve_static)
    await browser_page.route(f"{FAKE_ORIGIN}/vendor/**", serve_static)
    await serve_blank_page(browser_page, FAKE_ORIGIN)
    await browser_page.add_script_tag(type="module", content=HARNESS)
    await browser_page.wait_for_function("window.harnessReady === true")
    browser_page.page_errors.clear()
    yield browser_page
    assert browser_page.page_errors == []


async def run(page, body: str):
    """Run an async function body in the page, with a fake server installed; return its value."""
    return await page.evaluate(f"async () => {{ const {{ RealtimeClient, State }} = rt; {body} }}")


# --- pure functions -------------------------------------------------------------------------


async def test_backoff_is_full_jitter_below_an_exponential_ceiling_capped_at_30_s(page):
    result = await run(
        page,
        """
        const options = { backoffBaseMs: 500, backoffFactor: 2, backoffCapMs: 30000 };
        const highest = [...Array(9).keys()].map((n) => rt.backoffDelay(n, options, () => 0.9999));
        return { highest, lowest: rt.backoffDelay(5, options, () => 0) };
        """,
    )
    assert result["highest"] == [499, 999, 1999, 3999, 7999, 15998, 29997, 29997, 29997]
    assert result["lowest"] == 0


async def test_refresh_is_30_s_before_expiry_or_at_80_percent_of_a_short_lifetime(page):
    result = await run(
        page,
        """
        const options = { refreshLeadMs: 30000, refreshFraction: 0.8 };
        return [900000, 60000, 10000, -5].map((lifetime) => rt.refreshDelay(lifetime, options));
        """,
    )
    assert result == [870000, 48000, 8000, 0]


# --- connecting and requests ----------------------------------------------------------------


async def test_first_message_authentication_keeps_the_token_out_of_the_url(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const states = [];
        const client = new RealtimeClient({ url: "ws://server.test/ws", WebSocket: FakeWebSocket,
                                            getToken: async () => "secret-token" });
        client.onState((state) => states.push(state));
        const session = await client.connect();
        const ws = FakeWebSocket.sockets[0];
        return { url: ws.url, first: ws.sent[0], session, states, state: client.state };
        """,
    )
    assert "secret-token" not in result["url"]
    assert result["first"]["type"] == "AUTHENTICATION"
    assert result["first"]["payload"] == {"token": "secret-token"}
    assert result["first"]["id"] is not None
    assert result["session"]["userId"] == 7
    assert result["states"] == ["connecting", "connected"]


async def test_the_token_can_go_in_the_url_instead(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "a b",
                                            tokenInUrl: true, WebSocket: FakeWebSocket });
        const session = await client.connect();
        const ws = FakeWebSocket.sockets[0];
        return { url: ws.url, sent: ws.sent.map((m) => m.type), username: session.username };
        """,
    )
    assert result["url"] == "ws://server.test/ws?token=a%20b"
    assert "AUTHENTICATION" not in result["sent"]
    assert result["username"] == "alice"


async def test_subscribe_resolves_with_its_own_ack_correlated_by_id(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ reject: ["orders"] });
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket });
        await client.connect();
        const [first, second] = await Promise.all([
          client.subscribe(["user:7:orders", "orders"]),
          client.subscribe("market:aapl"),
        ]);
        const ids = FakeWebSocket.sockets[0].sentOfType("SUBSCRIPTION").map((m) => m.id);
        return { first, second, topics: client.topics, ids };
        """,
    )
    assert result["first"]["topics"] == ["user:7:orders"]
    assert result["first"]["rejected"] == [{"topic": "orders", "reason": "forbidden"}]
    assert result["second"]["topics"] == ["market:AAPL"]  # symbols are canonical upper-case
    assert result["topics"] == ["market:AAPL", "user:7:orders"]  # rejected ones are dropped
    assert len(set(result["ids"])) == 2


async def test_an_error_reply_rejects_the_request_with_the_servers_code(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket });
        await client.connect();
        const ws = FakeWebSocket.sockets[0];
        FakeWebSocket.server.silent.add("HEARTBEAT");
        const pending = client.request("HEARTBEAT");
        const id = ws.sentOfType("HEARTBEAT").at(-1).id;
        ws.receive({ type: "ERROR", id, payload: { code: "rate_limited", message: "slow down" } });
        try { await pending; return "resolved"; } catch (error) {
          return { name: error.name, code: error.code, message: error.message };
        }
        """,
    )
    assert result == {"name": "RealtimeError", "code": "rate_limited", "message": "slow down"}


async def test_pending_requests_are_rejected_when_the_connection_closes(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ silent: ["HEARTBEAT"] });
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 5000 });
        await client.connect();
        const pending = client.request("HEARTBEAT");
        await sleep(10);
        FakeWebSocket.sockets[0].drop(4000, "operator");
        try { await pending; return "resolved"; } catch (error) {
          return { code: error.code, closeCode: error.closeCode, state: client.state };
        }
        """,
    )
    assert result == {"code": "closed", "closeCode": 4000, "state": "reconnecting"}


async def test_a_subscribe_cut_off_by_a_drop_resolves_with_the_next_connections_ack(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ silent: ["subscribe"] });
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 20 });
        await client.connect();
        const pending = client.subscribe("user:7:orders");
        await sleep(10);
        FakeWebSocket.server.silent.delete("subscribe");
        FakeWebSocket.sockets[0].drop(4000, "operator");
        const ack = await pending;
        return { ack, topics: client.topics, sockets: FakeWebSocket.sockets.length,
                 asked: FakeWebSocket.sockets[1].subscribeEntries() };
        """,
    )
    assert result["ack"]["topics"] == ["user:7:orders"]
    assert result["ack"]["positions"] == {"user:7:orders": {"epoch": "e1", "seq": 0}}
    assert result["topics"] == ["user:7:orders"]
    assert result["asked"] == [[{"topic": "user:7:orders", "snapshot": True}]]


# --- reconnecting ---------------------------------------------------------------------------


async def test_after_a_drop_it_reconnects_with_backoff_and_resubscribes_to_everything(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const events = [];
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 40,
                                            random: () => 0.5 });
        client.onState((state, detail) => events.push([state, detail.code ?? null,
                                                        detail.delayMs ?? null]));
        client.onClose((event) => events.push(["close", event.code, event.willReconnect]));
        await client.connect();
        await client.subscribe(["user:7:orders", "market:BTC-USD"]);
        FakeWebSocket.server.refuseConnections = true;  // the first retry fails
        FakeWebSocket.sockets[0].drop(1006);
        await waitFor(() => FakeWebSocket.sockets.length === 2);
        FakeWebSocket.server.refuseConnections = false;
        FakeWebSocket.sockets[1].drop(1006);
        await waitFor(() => client.state === "connected");
        const third = FakeWebSocket.sockets[2];
        await waitFor(() => third.sentOfType("SUBSCRIPTION").length === 1);
        return { events, resubscribed: third.sentOfType("SUBSCRIPTION")[0].payload,
                 first: FakeWebSocket.sockets[0].subscribeEntries(),
                 session: client.session.connectionId };
        """,
    )
    assert result["events"] == [
        ["connecting", None, None],
        ["connected", None, None],
        ["close", 1006, True],
        ["reconnecting", 1006, 20],  # attempt 1: half of the 40 ms ceiling
        ["close", 1006, True],
        ["reconnecting", 1006, 40],  # attempt 2: the ceiling doubled
        ["connected", None, None],
    ]
    # First: a snapshot of each topic's state. After the drop: resume each from its position
    # (nothing was published, so seq 0), or else a snapshot, in one request.
    assert result["first"] == [
        [
            {"topic": "user:7:orders", "snapshot": True},
            {"topic": "market:BTC-USD", "snapshot": True},
        ]
    ]
    assert result["resubscribed"] == {
        "action": "subscribe",
        "topics": [
            {"topic": "user:7:orders", "since": {"epoch": "e1", "seq": 0}, "snapshot": True},
            {"topic": "market:BTC-USD", "since": {"epoch": "e1", "seq": 0}, "snapshot": True},
        ],
    }
    assert result["session"] == "conn-2"


async def test_subscribing_while_reconnecting_resolves_once_the_next_connection_subscribes(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ reject: ["orders"] });
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 30 });
        await client.connect();
        FakeWebSocket.sockets[0].drop(4508, "slow");
        const ack = await client.subscribe(["user:7:positions", "orders"]);
        return { ack, state: client.state, sockets: FakeWebSocket.sockets.length };
        """,
    )
    assert result["ack"]["topics"] == ["user:7:positions"]
    assert result["ack"]["rejected"] == [{"topic": "orders", "reason": "forbidden"}]
    assert result["state"] == "connected"
    assert result["sockets"] == 2


@pytest.mark.parametrize("code", [4401, 4403])
async def test_with_a_fixed_token_it_stays_offline_after_4401_and_4403_until_told_to_connect(
    page, code
):
    result = await run(
        page,
        f"""
        FakeWebSocket.server = makeServer();
        const closes = [];
        const client = new RealtimeClient({{ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 10 }});
        client.onClose((event) => closes.push(event));
        await client.connect();
        FakeWebSocket.sockets[0].drop({code}, "bye");
        await sleep(100);
        const offline = {{ state: client.state, sockets: FakeWebSocket.sockets.length }};
        await client.connect();
        return {{ offline, closes, state: client.state, sockets: FakeWebSocket.sockets.length }};
        """,
    )
    assert result["offline"] == {"state": "offline", "sockets": 1}
    assert result["closes"] == [
        {"code": code, "reason": "bye", "wasClean": True, "willReconnect": False}
    ]
    assert result["state"] == "connected"
    assert result["sockets"] == 2


async def test_a_refused_fixed_token_stops_like_a_4401(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "bad",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 10 });
        let detail;
        client.onState((state, d) => { if (state === "offline") detail = d; });
        try { await client.connect(); return "connected"; } catch (error) {
          await sleep(50);
          return { code: error.closeCode, detail, sockets: FakeWebSocket.sockets.length,
                   closedWith: FakeWebSocket.sockets[0].closedWith };
        }
        """,
    )
    assert result["code"] == 4401
    assert result["detail"] == {"code": 4401, "reason": "The token was refused."}
    assert result["sockets"] == 1
    assert result["closedWith"] == 1000


async def test_close_stops_reconnecting_and_connect_resumes_with_the_same_topics(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, backoffBaseMs: 10 });
        await client.connect();
        await client.subscribe("strategy:3");
        client.close();
        await sleep(50);
        const closed = { state: client.state, sockets: FakeWebSocket.sockets.length };
        await client.connect();
        const ws = FakeWebSocket.sockets[1];
        await waitFor(() => ws.sentOfType("SUBSCRIPTION").length === 1);
        return { closed, resubscribed: ws.sentOfType("SUBSCRIPTION")[0].payload.topics };
        """,
    )
    assert result["closed"] == {"state": "offline", "sockets": 1}
    assert result["resubscribed"] == [
        {"topic": "strategy:3", "since": {"epoch": "e1", "seq": 0}, "snapshot": True}
    ]


async def test_an_unanswered_heartbeat_drops_the_connection_and_reconnects(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ silent: ["HEARTBEAT"] });
        const closes = [];
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket, heartbeatIntervalMs: 20,
                                            requestTimeoutMs: 50, backoffBaseMs: 10 });
        client.onClose((event) => closes.push([event.code, event.reason, event.willReconnect]));
        await client.connect();
        await waitFor(() => FakeWebSocket.sockets.length === 2);
        return closes;
        """,
    )
    assert result[0] == [1006, "heartbeat timeout", True]


# --- delivery: positions, repeats, gaps, resume, snapshots ------------------------------------

TOPIC = "user:7:orders"


async def test_a_first_subscribe_asks_for_a_snapshot_and_holds_updates_until_its_last_page(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ pageSize: 2, pageDelayMs: 20 });
        const server = FakeWebSocket.server;
        for (const id of [1, 2, 3]) server.publish("user:7:orders", "ORDER_UPDATE", order(id));
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        const ack = await client.subscribe("user:7:orders");
        // A live update while the pages arrive: after the snapshot's seq, so it waits for them.
        FakeWebSocket.server.publish("user:7:orders", "ORDER_UPDATE", order(1, 2));
        await waitFor(() => events.length === 3);
        const plain = fakeClient();
        await plain.connect();
        const plainAck = await plain.subscribe("market:aapl", { snapshot: false });
        return { ack, events, asked: FakeWebSocket.sockets[0].subscribeEntries(),
                 positions: client.positions, stats: client.stats,
                 plainAsked: FakeWebSocket.sockets[1].subscribeEntries(), plainAck };
        """,
    )
    assert result["asked"] == [[{"topic": TOPIC, "snapshot": True}]]
    assert result["ack"] == {
        "action": "subscribed",
        "topics": [TOPIC],
        "rejected": [],
        "positions": {TOPIC: {"epoch": "e1", "seq": 3}},
        "recovered": [],
        "reset": [],
    }
    assert result["events"] == [
        ["snapshot", TOPIC, 3, [1, 2], True, False, None],
        ["snapshot", TOPIC, 3, [3], False, True, None],
        ["update", TOPIC, 4],
    ]
    assert result["positions"] == {TOPIC: {"epoch": "e1", "seq": 4}}
    assert result["stats"]["snapshots"] == 1
    assert result["plainAsked"] == [["market:AAPL"]]  # snapshot: false, nothing to resume
    assert result["plainAck"]["positions"] == {"market:AAPL": {"epoch": "e1", "seq": 0}}


async def test_repeated_messages_are_passed_on_once(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders", { snapshot: false });
        const server = FakeWebSocket.server, ws = FakeWebSocket.sockets[0];
        const first = server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        const second = server.publish("user:7:orders", "ORDER_UPDATE", order(1, 2));
        ws.receive(second);  // a message already on its way when the topic was fenced again
        ws.receive(first);
        server.publish("user:7:orders", "ORDER_UPDATE", order(1, 3));
        return { events, stats: client.stats, asked: ws.subscribeEntries().length };
        """,
    )
    assert result["events"] == [["update", TOPIC, 1], ["update", TOPIC, 2], ["update", TOPIC, 3]]
    assert result["stats"]["duplicates"] == 2
    assert result["asked"] == 1  # a repeat is no gap: nothing to repair


async def test_a_seq_jump_is_repaired_by_subscribing_again_with_since_on_the_same_connection(
    page,
):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders");
        const server = FakeWebSocket.server, ws = FakeWebSocket.sockets[0];
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        server.topic("user:7:orders").lose = 1;
        server.publish("user:7:orders", "ORDER_UPDATE", order(2));  // lost on the way
        server.publish("user:7:orders", "ORDER_UPDATE", order(3));  // seq 3 after 1: a gap
        await waitFor(() => events.some((e) => e[0] === "recovered"));
        server.publish("user:7:orders", "ORDER_UPDATE", order(4));
        return { events, stats: client.stats, sockets: FakeWebSocket.sockets.length,
                 asked: ws.subscribeEntries(), sent: ws.sent.map((m) => m.payload.action) };
        """,
    )
    assert result["events"] == [
        ["snapshot", TOPIC, 0, [], True, True, None],
        ["update", TOPIC, 1],
        ["update", TOPIC, 2],  # replayed: seq 3 was held back until 2 came
        ["update", TOPIC, 3],
        ["recovered", TOPIC, 2, "gap"],
        ["update", TOPIC, 4],
    ]
    assert result["asked"][1] == [
        {"topic": TOPIC, "since": {"epoch": "e1", "seq": 1}, "snapshot": True}
    ]
    assert "unsubscribe" not in result["sent"]
    assert result["sockets"] == 1
    assert result["stats"]["gaps"] == 1
    assert result["stats"]["repairs"] == 1


async def test_while_a_repair_is_pending_only_the_next_seq_is_applied(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders", { snapshot: false });
        const server = FakeWebSocket.server, ws = FakeWebSocket.sockets[0];
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        server.topic("user:7:orders").lose = 1;
        const second = server.publish("user:7:orders", "ORDER_UPDATE", order(2));
        server.silent.add("subscribe");  // the repair's reply is late
        server.publish("user:7:orders", "ORDER_UPDATE", order(3));  // the gap
        await waitFor(() => ws.subscribeEntries().length === 2);
        ws.receive(second);  // the next one: applied
        server.publish("user:7:orders", "ORDER_UPDATE", order(4));  // after a hole: not yet
        const meanwhile = events.map((e) => e[2]);
        server.subscribe(ws, ws.sentOfType("SUBSCRIPTION").at(-1));  // now the reply, and replay
        return { meanwhile, events };
        """,
    )
    assert result["meanwhile"] == [1, 2]
    assert result["events"] == [
        ["update", TOPIC, 1],
        ["update", TOPIC, 2],
        ["update", TOPIC, 3],
        ["update", TOPIC, 4],
        ["recovered", TOPIC, 3, "gap"],
    ]


async def test_a_heartbeat_position_ahead_of_the_clients_is_repaired(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders", { snapshot: false });
        const server = FakeWebSocket.server, ws = FakeWebSocket.sockets[0];
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        server.heartbeat(ws);  // in step: nothing to do
        const inStep = ws.subscribeEntries().length;
        server.topic("user:7:orders").lose = 1;
        server.publish("user:7:orders", "ORDER_UPDATE", order(1, 2));  // the last one, lost
        server.heartbeat(ws);  // says seq 2 was sent
        await waitFor(() => events.some((e) => e[0] === "recovered"));
        return { inStep, events, asked: ws.subscribeEntries().at(-1) };
        """,
    )
    assert result["inStep"] == 1
    assert result["asked"] == [{"topic": TOPIC, "since": {"epoch": "e1", "seq": 1}}]
    assert result["events"] == [
        ["update", TOPIC, 1],
        ["update", TOPIC, 2],
        ["recovered", TOPIC, 1, "heartbeat"],
    ]


async def test_after_a_reconnect_every_topic_resumes_with_since_and_gets_exactly_what_it_missed(
    page,
):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe(["user:7:orders", "strategy:3:orders"]);
        const server = FakeWebSocket.server;
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        server.publish("strategy:3:orders", "ORDER_UPDATE", order(9));
        server.refuseConnections = true;
        FakeWebSocket.sockets[0].drop(1006);
        for (const version of [2, 3, 4]) {  // while disconnected
          server.publish("user:7:orders", "ORDER_UPDATE", order(1, version));
        }
        events.length = 0;
        server.refuseConnections = false;
        await client.connect();
        await waitFor(() => events.filter((e) => e[0] === "recovered").length === 2);
        server.publish("user:7:orders", "ORDER_UPDATE", order(1, 5));
        return { events, asked: FakeWebSocket.sockets.at(-1).subscribeEntries(),
                 positions: client.positions };
        """,
    )
    assert result["asked"] == [
        [
            {"topic": TOPIC, "since": {"epoch": "e1", "seq": 1}, "snapshot": True},
            {"topic": "strategy:3:orders", "since": {"epoch": "e1", "seq": 1}, "snapshot": True},
        ]
    ]
    assert result["events"] == [
        ["recovered", "strategy:3:orders", 0, "reconnect"],  # nothing missed: at once
        ["update", TOPIC, 2],
        ["update", TOPIC, 3],
        ["update", TOPIC, 4],
        ["recovered", TOPIC, 3, "reconnect"],
        ["update", TOPIC, 5],
    ]
    assert result["positions"] == {
        TOPIC: {"epoch": "e1", "seq": 5},
        "strategy:3:orders": {"epoch": "e1", "seq": 1},
    }


async def test_a_resume_older_than_the_history_is_reset_and_the_snapshot_brings_the_state(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ historySize: 2, pageSize: 2 });
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders");
        const server = FakeWebSocket.server;
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        FakeWebSocket.sockets[0].drop(1006);
        // More than the history holds, while disconnected; order 2 deleted meanwhile.
        server.publish("user:7:orders", "ORDER_UPDATE", order(2));
        server.publish("user:7:orders", "ORDER_UPDATE", order(3));
        server.publish("user:7:orders", "ORDER_UPDATE", order(4));
        server.publish("user:7:orders", "ORDER_UPDATE", { ...order(2, 2), event: "deleted" });
        events.length = 0;
        await waitFor(() => events.some((e) => e[0] === "snapshot" && e[5]));
        const ws = FakeWebSocket.sockets.at(-1);
        ws.receive(server.topic("user:7:orders").history.at(-1));  // seq 5: in the snapshot
        server.publish("user:7:orders", "ORDER_UPDATE", order(3, 2));
        return { events, stats: client.stats, asked: ws.subscribeEntries() };
        """,
    )
    assert result["asked"] == [
        [{"topic": TOPIC, "since": {"epoch": "e1", "seq": 1}, "snapshot": True}]
    ]
    assert result["events"] == [
        ["reset", TOPIC, "expired", True, "reconnect"],
        ["snapshot", TOPIC, 5, [1, 3], True, False, "expired"],
        ["snapshot", TOPIC, 5, [4], False, True, "expired"],
        ["update", TOPIC, 6],
    ]
    assert result["stats"]["resets"] == 1
    assert result["stats"]["duplicates"] == 1


async def test_a_message_of_another_epoch_resets_the_topic_through_a_snapshot(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders");
        const server = FakeWebSocket.server, ws = FakeWebSocket.sockets[0];
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        server.publish("user:7:orders", "ORDER_UPDATE", order(1, 2));
        server.newEpoch("user:7:orders", "e2");  // the server lost the topic's history
        server.publish("user:7:orders", "ORDER_UPDATE", order(5));  // seq 1 of e2
        await waitFor(() => events.some((e) => e[0] === "snapshot" && e[2] === 1));
        server.publish("user:7:orders", "ORDER_UPDATE", order(5, 2));
        const byMessage = { events: events.slice(3), asked: ws.subscribeEntries().at(-1),
                            positions: client.positions };
        // The same from a heartbeat, on a quiet topic.
        events.length = 0;
        server.newEpoch("user:7:orders", "e3");
        server.heartbeat(ws);
        await waitFor(() => events.some((e) => e[0] === "snapshot"));
        return { byMessage, byHeartbeat: events, positions: client.positions };
        """,
    )
    by_message = result["byMessage"]
    assert by_message["asked"] == [
        {"topic": TOPIC, "since": {"epoch": "e1", "seq": 2}, "snapshot": True}
    ]
    assert by_message["events"] == [
        ["reset", TOPIC, "epoch", True, "epoch"],
        ["snapshot", TOPIC, 1, [1, 5], True, True, "epoch"],  # the state, not the history
        ["update", TOPIC, 2],
    ]
    assert result["byHeartbeat"] == [
        ["reset", TOPIC, "epoch", True, "epoch"],
        ["snapshot", TOPIC, 0, [1, 5], True, True, "epoch"],
    ]
    assert result["positions"] == {TOPIC: {"epoch": "e3", "seq": 0}}


async def test_with_snapshots_off_a_reset_tells_the_page_to_reload_and_goes_on_live(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ historySize: 1 });
        const client = fakeClient({ snapshot: false });
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders");
        const server = FakeWebSocket.server;
        server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        FakeWebSocket.sockets[0].drop(1006);
        server.publish("user:7:orders", "ORDER_UPDATE", order(2));
        server.publish("user:7:orders", "ORDER_UPDATE", order(3));
        await waitFor(() => events.some((e) => e[0] === "reset"));
        server.publish("user:7:orders", "ORDER_UPDATE", order(4));
        return { events, asked: FakeWebSocket.sockets.map((ws) => ws.subscribeEntries()) };
        """,
    )
    assert result["asked"] == [
        [[TOPIC]],
        [[{"topic": TOPIC, "since": {"epoch": "e1", "seq": 1}}]],
    ]
    assert result["events"] == [
        ["update", TOPIC, 1],
        ["reset", TOPIC, "expired", False, "reconnect"],
        ["update", TOPIC, 4],
    ]


async def test_a_snapshot_that_does_not_come_is_a_reset_so_the_page_reloads_by_itself(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ noSnapshots: true });
        const client = fakeClient({ requestTimeoutMs: 100 });
        const events = track(client);
        await client.connect();
        await client.subscribe("user:7:orders");
        FakeWebSocket.server.publish("user:7:orders", "ORDER_UPDATE", order(1));  // held
        await waitFor(() => events.length === 2);
        return events;
        """,
    )
    assert result == [
        ["reset", TOPIC, "no_snapshot", False, "snapshot"],
        ["update", TOPIC, 1],
    ]


async def reload_harness(page) -> None:
    await page.reload()
    await page.add_script_tag(type="module", content=HARNESS)
    await page.wait_for_function("window.harnessReady === true")


async def test_positions_survive_a_page_reload_in_session_storage_when_the_page_opts_in(page):
    before = await run(
        page,
        """
        sessionStorage.clear();
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ positionStorage: sessionStorage });
        const other = fakeClient();  // not opted in: stores nothing
        await Promise.all([client.connect(), other.connect()]);
        await client.subscribe(["user:7:orders", "market:AAPL"]);
        await other.subscribe("strategy:3");
        for (const id of [1, 2, 3]) {
          FakeWebSocket.server.publish("user:7:orders", "ORDER_UPDATE", order(id));
        }
        await client.unsubscribe("market:AAPL");
        return client.positions;
        """,
    )
    assert before == {TOPIC: {"epoch": "e1", "seq": 3}}
    await reload_harness(page)  # pagehide saves the positions
    result = await run(
        page,
        """
        const stored = JSON.parse(sessionStorage.getItem("tradingrt.realtime.positions:7"));
        const keys = Object.keys(sessionStorage);
        FakeWebSocket.server = makeServer();  // the same server's topic, two updates later
        for (const id of [1, 2, 3, 4, 5]) {
          FakeWebSocket.server.publish("user:7:orders", "ORDER_UPDATE", order(id));
        }
        const client = fakeClient({ positionStorage: sessionStorage });
        const events = track(client);
        client.subscribe("user:7:orders");  // before connecting: the user is known only then
        await client.connect();
        await waitFor(() => events.some((e) => e[0] === "recovered"));
        const fresh = fakeClient();
        await fresh.connect();
        await fresh.subscribe("user:7:orders");
        return { stored, keys, events, asked: FakeWebSocket.sockets[0].subscribeEntries(),
                 freshAsked: FakeWebSocket.sockets[1].subscribeEntries() };
        """,
    )
    assert result["keys"] == ["tradingrt.realtime.positions:7"]
    assert result["stored"] == {TOPIC: {"epoch": "e1", "seq": 3}}
    assert result["asked"] == [
        [{"topic": TOPIC, "since": {"epoch": "e1", "seq": 3}, "snapshot": True}]
    ]
    assert result["events"] == [
        ["update", TOPIC, 4],
        ["update", TOPIC, 5],
        ["recovered", TOPIC, 2, "reload"],
    ]
    assert result["freshAsked"] == [[{"topic": TOPIC, "snapshot": True}]]


async def test_an_error_reply_to_subscribe_forgets_the_new_topics(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        await client.connect();
        await client.subscribe("user:7:orders");
        FakeWebSocket.server.errorOnSubscribe = "internal_error";
        let code;
        try { await client.subscribe("strategy:3"); } catch (error) { code = error.code; }
        FakeWebSocket.server.errorOnSubscribe = null;
        FakeWebSocket.sockets[0].drop(1006);
        await waitFor(() => FakeWebSocket.sockets.length === 2 && client.state === "connected");
        await waitFor(() => FakeWebSocket.sockets[1].subscribeEntries().length === 1);
        return { code, topics: client.topics,
                 resubscribed: FakeWebSocket.sockets[1].subscribeEntries()[0].map((e) => e.topic) };
        """,
    )
    assert result == {
        "code": "internal_error",
        "topics": [TOPIC],  # not kept as if held, never asked for again
        "resubscribed": [TOPIC],
    }


async def test_a_subscribe_answered_rate_limited_is_asked_again_with_backoff_until_answered(page):
    """Issue 19: a SUBSCRIPTION dropped unread (ERROR `rate_limited`, as at a busy sign-in) is
    not a refusal: its topics stay, `retrying`, and are asked for again with backoff, as topics
    refused `unavailable` are; the call resolves with the ack that finally comes."""
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ random: () => 0.5 });
        const states = [];
        client.onSubscriptionState((topic, state, detail) => states.push([topic, state, detail]));
        await client.connect();
        FakeWebSocket.server.errorOnSubscribe = "rate_limited";
        const settled = client.subscribe("strategy:3");
        await waitFor(() => FakeWebSocket.sockets[0].subscribeEntries().length === 2);
        const during = { topics: client.topics, state: client.subscriptionState("strategy:3") };
        FakeWebSocket.server.errorOnSubscribe = null;  // the rate limit lets it through
        const ack = await settled;
        return { ack, during, states, sockets: FakeWebSocket.sockets.length,
                 asked: FakeWebSocket.sockets[0].subscribeEntries(), topics: client.topics };
        """,
    )
    assert result["ack"]["topics"] == ["strategy:3"]
    assert result["ack"]["rejected"] == []
    assert result["during"] == {
        "topics": ["strategy:3"],  # held while it is asked for again
        "state": {"state": "retrying", "reason": "rate_limited", "attempt": 2},
    }
    assert result["states"] == [
        ["strategy:3", "subscribing", {}],
        ["strategy:3", "retrying", {"reason": "rate_limited", "attempt": 1, "delayMs": 250}],
        ["strategy:3", "retrying", {"reason": "rate_limited", "attempt": 2, "delayMs": 250}],
        ["strategy:3", "subscribed", {}],
    ]
    assert result["asked"] == [[{"topic": "strategy:3", "snapshot": True}]] * 3
    assert result["topics"] == ["strategy:3"]
    assert result["sockets"] == 1  # on the same connection


async def test_heartbeats_go_on_after_one_is_answered_with_an_error(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        FakeWebSocket.server.errorOnHeartbeat = "rate_limited";
        const client = fakeClient({ heartbeatIntervalMs: 10 });
        await client.connect();
        await waitFor(() => FakeWebSocket.sockets[0].sentOfType("HEARTBEAT").length >= 3);
        client.close();
        return { sockets: FakeWebSocket.sockets.length };
        """,
    )
    assert result == {"sockets": 1}


# --- token refresh --------------------------------------------------------------------------


async def test_the_token_is_refreshed_in_band_before_it_expires(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ expiresInMs: 500 });
        const reasons = [];
        let n = 0;
        const client = new RealtimeClient({ url: "ws://server.test/ws", WebSocket: FakeWebSocket,
          getToken: async (context) => { reasons.push(context.reason); return `token-${++n}`; } });
        const first = await client.connect();
        FakeWebSocket.server.expiresInMs = 60000;
        await waitFor(() => client.session.expiresAt !== first.expiresAt);
        const ws = FakeWebSocket.sockets[0];
        return { reasons, sockets: FakeWebSocket.sockets.length, state: client.state,
                 tokens: ws.sentOfType("AUTHENTICATION").map((m) => m.payload.token) };
        """,
    )
    assert result["reasons"] == ["connect", "refresh"]
    assert result["tokens"] == ["token-1", "token-2"]  # on the same connection
    assert result["sockets"] == 1
    assert result["state"] == "connected"


async def test_a_failed_refresh_is_reported_and_retried(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ expiresInMs: 2500 });  // refreshed at half-life
        let calls = 0;
        const errors = [];
        const client = new RealtimeClient({ url: "ws://server.test/ws", WebSocket: FakeWebSocket,
          refreshFraction: 0.5,
          getToken: async ({ reason }) => {
            calls += 1;
            if (reason === "refresh" && calls === 2) throw new Error("refresh endpoint down");
            return `token-${calls}`;
          } });
        client.onError((error) => errors.push([error.code, error.message]));
        const first = await client.connect();
        FakeWebSocket.server.expiresInMs = 60000;
        await waitFor(() => client.session.expiresAt !== first.expiresAt, 5000);
        return { errors, calls };
        """,
    )
    assert result["errors"] == [["refresh", "Token refresh failed: refresh endpoint down"]]
    assert result["calls"] == 3


# --- listeners ------------------------------------------------------------------------------


async def test_listeners_by_type_topic_and_for_uncorrelated_errors(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const seen = [];
        const client = new RealtimeClient({ url: "ws://server.test/ws", token: "t",
                                            WebSocket: FakeWebSocket });
        client.on("ORDER_UPDATE", (m) => seen.push(["type", m.payload.id]));
        client.on("*", (m) => seen.push(["any", m.type]));
        const off = client.onTopic("market:btc-usd", (m) => seen.push(["topic", m.payload.last]));
        client.onError((error) => seen.push(["error", error.code]));
        client.on("MARKET_DATA", () => { throw new Error("a broken listener"); });
        await client.connect();
        seen.length = 0;
        const ws = FakeWebSocket.sockets[0];
        ws.receive({ type: "ORDER_UPDATE", topic: "user:7:orders", payload: { id: 5 } });
        ws.receive({ type: "MARKET_DATA", topic: "market:BTC-USD", payload: { last: "1" } });
        off();
        ws.receive({ type: "MARKET_DATA", topic: "market:BTC-USD", payload: { last: "2" } });
        ws.receive({ type: "ERROR", payload: { code: "rate_limited", message: "slow down" } });
        return seen;
        """,
    )
    assert result == [
        ["type", 5],
        ["any", "ORDER_UPDATE"],
        ["any", "MARKET_DATA"],
        ["topic", "1"],
        ["any", "MARKET_DATA"],
        ["error", "rate_limited"],
        ["any", "ERROR"],
    ]
    # The broken listener's error surfaces on the page, and did not stop the others.
    await page.wait_for_timeout(100)
    assert any("a broken listener" in error for error in page.page_errors)
    page.page_errors.clear()


# --- encodings ------------------------------------------------------------------------------


async def test_on_msgpack_it_offers_the_subprotocol_and_speaks_binary_frames_both_ways(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ encoding: "msgpack" });
        const events = track(client);
        const states = [];
        client.onState((state, detail) => states.push([state, detail.encoding ?? null]));
        await client.connect();
        await client.subscribe("user:7:orders");
        FakeWebSocket.server.publish("user:7:orders", "ORDER_UPDATE", order(1));
        await waitFor(() => events.length === 2);
        const ws = FakeWebSocket.sockets[0];
        return { offered: ws.protocols, selected: ws.protocol, frames: ws.frames,
                 sent: ws.sent.map((m) => m.type), events, encoding: client.encoding, states };
        """,
    )
    assert result["offered"] == ["tradingrt.msgpack", "tradingrt.json"]
    assert result["selected"] == "tradingrt.msgpack"
    assert result["sent"] == ["AUTHENTICATION", "SUBSCRIPTION"]
    assert result["frames"] == ["binary", "binary"]  # decoded by the fake with @msgpack/msgpack
    assert result["events"] == [
        ["snapshot", TOPIC, 0, [], True, True, None],
        ["update", TOPIC, 1],
    ]
    assert result["encoding"] == "msgpack"
    assert result["states"] == [["connecting", None], ["connected", "msgpack"]]


async def test_when_the_server_selects_no_subprotocol_it_falls_back_to_json_and_says_so(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ subprotocols: [] });  // an older server
        const client = fakeClient({ encoding: "msgpack" });
        const errors = [];
        client.onError((error) => errors.push([error.code, error.message]));
        await client.connect();
        const ack = await client.subscribe("user:7:orders");
        const ws = FakeWebSocket.sockets[0];
        return { frames: ws.frames, topics: ack.topics, errors, encoding: client.encoding };
        """,
    )
    assert result["frames"] == ["text", "text"]
    assert result["topics"] == [TOPIC]
    assert result["errors"] == [
        [
            "encoding",
            "The server selected no subprotocol instead of tradingrt.msgpack; "
            "this connection uses JSON.",
        ]
    ]
    assert result["encoding"] == "json"


async def test_a_json_client_offers_no_subprotocol(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        await client.connect();
        const ws = FakeWebSocket.sockets[0];
        return { offered: ws.protocols, frames: ws.frames };
        """,
    )
    assert result == {"offered": [], "frames": ["text"]}


# --- subscribe entries: filters, throttling, presence ------------------------------------------


async def test_entries_carry_their_options_on_every_subscribe_and_resubscription(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        await client.connect();
        await client.subscribe([
          { topic: "user:7:orders", filter: { side: "BUY", symbol: ["AAPL", "MSFT"] } },
          { topic: "market:aapl", presence: true },
          "market:MSFT",
        ], { throttleMs: 250, snapshot: false });
        await client.subscribe("strategy:3");  // the held ones keep their options in the entry
        FakeWebSocket.sockets[0].drop(1006);
        await waitFor(() => FakeWebSocket.sockets.length === 2 && client.state === "connected");
        await waitFor(() => FakeWebSocket.sockets[1].subscribeEntries().length === 1);
        return { asked: FakeWebSocket.sockets[0].subscribeEntries(),
                 resumed: FakeWebSocket.sockets[1].subscribeEntries()[0] };
        """,
    )
    filtered = {
        "topic": TOPIC,
        "filter": {"side": "BUY", "symbol": ["AAPL", "MSFT"]},
        "throttleMs": 250,
    }
    assert result["asked"] == [
        [
            filtered,
            {"topic": "market:AAPL", "throttleMs": 250, "presence": True},
            {"topic": "market:MSFT", "throttleMs": 250},
        ],
        [{"topic": "strategy:3", "snapshot": True}],
    ]
    since = {"epoch": "e1", "seq": 0}
    assert result["resumed"] == [
        {**filtered, "since": since},
        {"topic": "market:AAPL", "throttleMs": 250, "presence": True, "since": since},
        {"topic": "market:MSFT", "throttleMs": 250, "since": since},
        {"topic": "strategy:3", "since": since, "snapshot": True},
    ]


async def test_subscribing_again_with_another_filter_reloads_the_topic_from_a_snapshot(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const server = FakeWebSocket.server;
        server.publish("user:7:orders", "ORDER_UPDATE", { ...order(1), side: "BUY" });
        server.publish("user:7:orders", "ORDER_UPDATE", { ...order(2), side: "SELL" });
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe({ topic: "user:7:orders", filter: { side: "BUY" } });
        await client.subscribe({ topic: "user:7:orders", filter: { side: "BUY" } });  // the same
        await client.subscribe({ topic: "user:7:orders", filter: { side: ["BUY", "SELL"] } });
        await waitFor(() => events.length === 2);
        return { events, asked: FakeWebSocket.sockets[0].subscribeEntries() };
        """,
    )
    assert result["asked"] == [
        [{"topic": TOPIC, "filter": {"side": "BUY"}, "snapshot": True}],
        [{"topic": TOPIC, "filter": {"side": "BUY"}}],  # held as it is: no fence, no snapshot
        [{"topic": TOPIC, "filter": {"side": ["BUY", "SELL"]}, "snapshot": True}],
    ]
    assert result["events"] == [
        ["snapshot", TOPIC, 2, [1, 2], True, True, None],  # the fake's snapshots are unfiltered
        ["snapshot", TOPIC, 2, [1, 2], True, True, None],
    ]


async def test_on_a_filtered_topic_a_seq_jump_or_a_heartbeat_ahead_is_no_gap(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const server = FakeWebSocket.server, ws = () => FakeWebSocket.sockets[0];
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe({ topic: "user:7:orders", filter: { side: "BUY" } },
                               { snapshot: false });
        await client.subscribe("strategy:3:orders", { snapshot: false });  // unfiltered: repaired
        for (const [id, side] of [[1, "BUY"], [2, "SELL"], [3, "SELL"], [4, "BUY"]]) {
          server.publish("user:7:orders", "ORDER_UPDATE", { ...order(id), side });
        }
        server.publish("user:7:orders", "ORDER_UPDATE", { ...order(5), side: "SELL" });
        server.heartbeat(ws());  // user:7:orders is at seq 5, the client at 4
        const positions = client.positions;
        server.topic("strategy:3:orders").lose = 1;
        server.publish("strategy:3:orders", "ORDER_UPDATE", order(9));
        server.heartbeat(ws());
        await waitFor(() => events.some((e) => e[0] === "recovered"));
        return { events, positions, stats: client.stats, asked: ws().subscribeEntries().length };
        """,
    )
    assert result["events"] == [
        ["update", TOPIC, 1],
        ["update", TOPIC, 4],  # seqs 2 and 3 were filtered out: not a gap
        ["update", "strategy:3:orders", 1],
        ["recovered", "strategy:3:orders", 1, "heartbeat"],
    ]
    assert result["positions"][TOPIC] == {"epoch": "e1", "seq": 5}  # the heartbeat's
    assert result["stats"]["gaps"] == 1
    assert result["asked"] == 3  # two subscribes, one repair: of the unfiltered topic only


async def test_a_filtered_topic_resumes_with_since_and_its_recovery_ends_at_the_servers_position(
    page,
):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const server = FakeWebSocket.server;
        const client = fakeClient();
        const events = track(client);
        await client.connect();
        await client.subscribe({ topic: "user:7:orders", filter: { side: "BUY" } });
        server.publish("user:7:orders", "ORDER_UPDATE", { ...order(1), side: "BUY" });
        FakeWebSocket.sockets[0].drop(1006);
        for (const [id, side] of [[2, "BUY"], [3, "SELL"]]) {  // the last one missed is filtered
          server.publish("user:7:orders", "ORDER_UPDATE", { ...order(id), side });
        }
        events.length = 0;
        await waitFor(() => events.some((e) => e[0] === "recovered"));
        const ws = FakeWebSocket.sockets.at(-1);
        return { events, asked: ws.subscribeEntries(), sent: ws.sent.map((m) => m.type),
                 positions: client.positions };
        """,
    )
    assert result["asked"] == [
        [
            {
                "topic": TOPIC,
                "filter": {"side": "BUY"},
                "since": {"epoch": "e1", "seq": 1},
                "snapshot": True,
            }
        ]
    ]
    assert result["events"] == [["update", TOPIC, 2], ["recovered", TOPIC, 1, "reconnect"]]
    # The replay ends at seq 2; a HEARTBEAT's positions say the topic is at 3.
    assert result["sent"] == ["AUTHENTICATION", "SUBSCRIPTION", "HEARTBEAT"]
    assert result["positions"] == {TOPIC: {"epoch": "e1", "seq": 3}}


async def test_presence_pages_and_presence_all(page):
    result = await run(
        page,
        """
        const members = [1, 2, 3, 4, 5].map((userId) => ({
          userId, username: `user${userId}`, connections: 1, since: "2026-11-29T02:11:53.497Z" }));
        FakeWebSocket.server = makeServer({ members: { "market:AAPL": members },
                                            reject: ["market:MSFT"] });
        const client = fakeClient();
        await client.connect();
        const first = await client.presence("market:aapl", { limit: 2 });
        const second = await client.presence("market:AAPL", { limit: 2, after: first.next });
        const all = await client.presenceAll("market:AAPL", { limit: 2 });
        let refused;
        try { await client.presence("market:MSFT"); } catch (error) { refused = error.code; }
        const requests = FakeWebSocket.sockets[0].sentOfType("SUBSCRIPTION").map((m) => m.payload);
        client.close();
        let offline;
        try { await client.presence("market:AAPL"); } catch (error) { offline = error.code; }
        return { first, second, all: all.members.map((m) => m.userId), allNext: all.next,
                 refused, offline, requests };
        """,
    )
    assert [m["userId"] for m in result["first"]["members"]] == [1, 2]
    assert result["first"]["next"] == 2
    assert result["first"]["members"][0] == {
        "userId": 1,
        "username": "user1",
        "connections": 1,
        "since": "2026-11-29T02:11:53.497Z",
    }
    assert [m["userId"] for m in result["second"]["members"]] == [3, 4]
    assert result["all"] == [1, 2, 3, 4, 5]  # three pages
    assert result["allNext"] is None
    assert result["refused"] == "forbidden"
    assert result["offline"] == "not_connected"
    assert result["requests"][:2] == [
        {"action": "presence", "topics": ["market:AAPL"], "limit": 2},
        {"action": "presence", "topics": ["market:AAPL"], "limit": 2, "after": {"market:AAPL": 2}},
    ]
    assert len(result["requests"]) == 6


async def test_presence_events_reach_on_presence_listeners_until_removed(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const seen = [];
        const off = client.onPresence((topic, event) => seen.push([topic, event]));
        await client.connect();
        await client.subscribe({ topic: "market:AAPL", presence: true });
        const ws = FakeWebSocket.sockets[0];
        ws.receive({ type: "PRESENCE", topic: "market:AAPL",
                     payload: { event: "join", userId: 3, username: "bob" } });
        ws.receive({ type: "PRESENCE", topic: "market:AAPL",
                     payload: { event: "leave", userId: 3, username: "bob" } });
        off();
        ws.receive({ type: "PRESENCE", topic: "market:AAPL",
                     payload: { event: "join", userId: 4, username: "carol" } });
        return seen;
        """,
    )
    assert result == [
        ["market:AAPL", {"event": "join", "userId": 3, "username": "bob"}],
        ["market:AAPL", {"event": "leave", "userId": 3, "username": "bob"}],
    ]


# --- per-topic state ------------------------------------------------------------------------


async def test_a_topic_refused_unavailable_is_retried_with_backoff_until_subscribed(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ unavailable: ["user:7:orders"], reject: ["orders"] });
        const client = fakeClient({ random: () => 0.5 });
        const states = [];
        client.onSubscriptionState((topic, state, detail) => states.push([topic, state, detail]));
        await client.connect();
        const ack = await client.subscribe(["user:7:orders", "orders"]);
        const during = { topics: client.topics, state: client.subscriptionState("user:7:orders"),
                         refused: client.subscriptionState("orders") };
        await waitFor(() => FakeWebSocket.sockets[0].subscribeEntries().length === 3);
        FakeWebSocket.server.unavailable.clear();  // Redis is back
        await waitFor(() => client.subscriptionState("user:7:orders").state === "subscribed");
        return { ack, during, states, asked: FakeWebSocket.sockets[0].subscribeEntries() };
        """,
    )
    assert result["ack"]["rejected"] == [
        {"topic": TOPIC, "reason": "unavailable"},
        {"topic": "orders", "reason": "forbidden"},
    ]
    assert result["during"] == {
        "topics": [TOPIC],  # held, and asked for again
        "state": {"state": "retrying", "reason": "unavailable", "attempt": 1},
        "refused": {"state": "failed", "reason": "forbidden", "attempt": 0},
    }
    assert result["states"] == [
        [TOPIC, "subscribing", {}],
        ["orders", "subscribing", {}],
        [TOPIC, "retrying", {"reason": "unavailable", "attempt": 1, "delayMs": 250}],
        ["orders", "failed", {"reason": "forbidden"}],
        [TOPIC, "retrying", {"reason": "unavailable", "attempt": 2, "delayMs": 250}],
        [TOPIC, "retrying", {"reason": "unavailable", "attempt": 3, "delayMs": 250}],
        [TOPIC, "subscribed", {}],
    ]
    assert result["asked"][1:] == [[{"topic": TOPIC, "snapshot": True}]] * 3


async def test_topics_go_back_to_subscribing_on_a_drop_and_a_revoked_one_fails(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const states = [];
        client.onSubscriptionState((topic, state, detail) => states.push([topic, state, detail]));
        await client.connect();
        await client.subscribe(["user:7:orders", "orders"]);
        FakeWebSocket.sockets[0].drop(1006);
        await waitFor(() => client.state === "connected");
        await waitFor(() => states.length === 8);
        FakeWebSocket.sockets[1].receive({ type: "SUBSCRIPTION",
          payload: { action: "revoked", topics: ["orders"], reason: "forbidden" } });
        return { states, topics: client.topics, orders: client.subscriptionState("orders") };
        """,
    )
    assert result["states"] == [
        [TOPIC, "subscribing", {}],
        ["orders", "subscribing", {}],
        [TOPIC, "subscribed", {}],
        ["orders", "subscribed", {}],
        [TOPIC, "subscribing", {}],  # the drop
        ["orders", "subscribing", {}],
        [TOPIC, "subscribed", {}],
        ["orders", "subscribed", {}],
        ["orders", "failed", {"reason": "forbidden", "message": "revoked by the server"}],
    ]
    assert result["topics"] == [TOPIC]
    assert result["orders"] == {"state": "failed", "reason": "forbidden", "attempt": 0}


# --- settling: nothing left pending -----------------------------------------------------------


async def test_subscribe_while_offline_resolves_with_the_next_connections_ack(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const pending = client.subscribe("user:7:orders");
        await sleep(20);
        const before = { sockets: FakeWebSocket.sockets.length, state: client.state,
                         topic: client.subscriptionState("user:7:orders") };
        client.connect();
        const ack = await pending;
        return { before, topics: ack.topics };
        """,
    )
    assert result["before"] == {
        "sockets": 0,
        "state": "offline",
        "topic": {"state": "subscribing", "reason": None, "attempt": 0},
    }
    assert result["topics"] == [TOPIC]


@pytest.mark.parametrize(
    ("how", "code"),
    [("dispose", "disposed"), ("close", "closed"), ("4403", "closed"), ("signed out", "closed")],
)
async def test_subscribe_while_not_connected_rejects_when_the_client_goes_offline(page, how, code):
    result = await run(
        page,
        f"""
        FakeWebSocket.server = makeServer();
        const how = "{how}";
        let tokens = 0;
        const client = fakeClient({{ backoffBaseMs: 5000,
          getToken: () => (how === "signed out" && ++tokens > 1 ? null : "t") }});
        await client.connect();
        FakeWebSocket.sockets[0].drop(1006);  // the next attempt in 0 to 5 s
        const pending = client.subscribe("user:7:orders").then(() => "resolved",
                                                               (error) => error.code);
        if (how === "dispose") client.dispose();
        if (how === "close") client.close();
        if (how === "signed out") client.connect().catch(() => {{}});  // now: getToken says null
        if (how === "4403") {{  // the next connection opens, and the user is deactivated
          FakeWebSocket.server.silent.add("AUTHENTICATION");
          client.connect().catch(() => {{}});
          await waitFor(() => FakeWebSocket.sockets.length === 2
                              && FakeWebSocket.sockets[1].readyState === 1);
          FakeWebSocket.sockets[1].drop(4403);
        }}
        return {{ settled: await pending, state: client.state }};
        """,
    )
    assert result == {"settled": code, "state": "offline"}


async def test_on_close_listeners_already_see_the_state_the_close_leads_to(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient();
        const seen = [];
        client.onClose((event) => seen.push([event.code, event.willReconnect, client.state]));
        await client.connect();
        FakeWebSocket.sockets[0].drop(4000);
        await waitFor(() => client.state === "connected");
        FakeWebSocket.sockets[1].drop(4403);
        client.connect();
        await waitFor(() => client.state === "connected");
        client.close();
        return seen;
        """,
    )
    assert result == [
        [4000, True, "reconnecting"],
        [4403, False, "offline"],
        [1000, False, "offline"],
    ]


async def test_dispose_removes_the_page_listeners_and_refuses_later_calls(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const added = [], removed = [];
        // Record what the client adds to and removes from the page.
        const spy = (target, method, into) => {
          const original = target[method];
          target[method] = function (name, fn) {
            into.push(name);
            return original.call(this, name, fn);
          };
          return () => { target[method] = original; };
        };
        let undo = [spy(window, "addEventListener", added),
                    spy(document, "addEventListener", added)];
        let client;
        try {
          client = fakeClient({ positionStorage: sessionStorage, backoffBaseMs: 60000 });
        } finally {
          undo.forEach((restore) => restore());
        }
        await client.connect();
        FakeWebSocket.sockets[0].drop(1006);  // waiting a minute to reconnect
        undo = [spy(window, "removeEventListener", removed),
                spy(document, "removeEventListener", removed)];
        try { client.dispose(); } finally { undo.forEach((restore) => restore()); }
        window.dispatchEvent(new Event("online"));  // would cut the wait short: ignored now
        await sleep(30);
        const codes = [];
        for (const call of [() => client.connect(), () => client.subscribe("strategy:3"),
                            () => client.request("HEARTBEAT")]) {
          try { await call(); codes.push("resolved"); } catch (error) { codes.push(error.code); }
        }
        return { added: added.sort(), removed: removed.sort(), state: client.state, codes,
                 sockets: FakeWebSocket.sockets.length };
        """,
    )
    assert result["added"] == ["offline", "online", "pagehide", "visibilitychange"]
    assert result["removed"] == result["added"]
    assert result["state"] == "offline"
    assert result["sockets"] == 1
    assert result["codes"] == ["disposed", "disposed", "disposed"]


# --- liveness -------------------------------------------------------------------------------


async def test_a_socket_stuck_opening_is_dropped_after_the_connect_timeout_and_retried(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        FakeWebSocket.server.stallConnections = true;  // the handshake never completes
        const client = fakeClient({ connectTimeoutMs: 50 });
        const closes = [];
        client.onClose((event) => closes.push([event.code, event.reason, event.willReconnect]));
        const connected = client.connect();
        await waitFor(() => FakeWebSocket.sockets.length === 2);
        FakeWebSocket.server.stallConnections = false;
        FakeWebSocket.sockets[1].open();
        await connected;
        return { closes, first: FakeWebSocket.sockets[0].readyState, state: client.state };
        """,
    )
    assert result["closes"] == [[1006, "connect timeout", True]]
    assert result["first"] in (2, 3)  # closed by the client
    assert result["state"] == "connected"


async def test_the_browser_going_offline_drops_the_socket_and_online_retries_at_once(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ backoffBaseMs: 60000, random: () => 0.99 });
        const events = [];
        client.onClose((event) => events.push(["close", event.code, event.reason]));
        client.onState((state, detail) => events.push([state, detail.delayMs ?? null]));
        await client.connect();
        await client.subscribe("user:7:orders");
        window.dispatchEvent(new Event("offline"));
        await sleep(20);
        const sockets = FakeWebSocket.sockets.length;
        window.dispatchEvent(new Event("online"));  // long before the 59 s delay is over
        await waitFor(() => client.state === "connected");
        await waitFor(() => FakeWebSocket.sockets[1].subscribeEntries().length === 1);
        return { events, sockets, after: FakeWebSocket.sockets.length };
        """,
    )
    assert result["events"] == [
        ["connecting", None],
        ["connected", None],
        ["close", 1006, "the browser went offline"],
        ["reconnecting", 29700],  # 0.99 of the 30 s cap
        ["connected", None],
    ]
    assert result["sockets"] == 1
    assert result["after"] == 2


async def test_a_page_shown_again_while_waiting_to_reconnect_retries_at_once(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ backoffBaseMs: 60000, random: () => 0.99 });
        await client.connect();
        FakeWebSocket.sockets[0].drop(1006);
        await sleep(20);
        const waiting = [client.state, FakeWebSocket.sockets.length];
        document.dispatchEvent(new Event("visibilitychange"));  // headless pages are visible
        await waitFor(() => client.state === "connected");
        return { waiting, sockets: FakeWebSocket.sockets.length };
        """,
    )
    assert result == {"waiting": ["reconnecting", 1], "sockets": 2}


async def test_the_online_event_leaves_no_unhandled_rejection_when_the_attempt_fails(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ backoffBaseMs: 60000 });
        await client.connect();
        FakeWebSocket.server.refuseConnections = true;
        FakeWebSocket.sockets[0].drop(1006);
        window.dispatchEvent(new Event("online"));  // tries at once, and fails
        await waitFor(() => FakeWebSocket.sockets.length === 2 && client.state === "reconnecting"
                            && FakeWebSocket.sockets[1].readyState === 3);
        client.close();  // and now nothing will connect
        await sleep(50);
        return { state: client.state, sockets: FakeWebSocket.sockets.length };
        """,
    )
    assert result == {"state": "offline", "sockets": 2}
    # The page fixture fails the test on any page error, unhandled rejections included.


async def test_silence_for_stale_after_ms_is_reported_and_drops_the_connection(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ staleAfterMs: 150 });
        const events = [];
        client.onStale((stale, { lastMessageAt }) =>
          events.push(["stale", stale, lastMessageAt === client.lastMessageAt]));
        client.onClose((event) => events.push(["close", event.code, event.reason]));
        await client.connect();
        const first = client.lastMessageAt;
        await client.subscribe("user:7:orders");
        FakeWebSocket.server.refuseConnections = true;  // the server stays away a while
        await waitFor(() => client.stale);
        const whileStale = client.stale;
        FakeWebSocket.server.refuseConnections = false;
        await waitFor(() => client.state === "connected" && !client.stale, 5000);
        return { events: events.filter((e) => e[1] !== 1006 || e[0] !== "close"),
                 closes: events.filter((e) => e[0] === "close").map((e) => e[2]),
                 whileStale, first: typeof first, later: client.lastMessageAt > first };
        """,
    )
    assert result["closes"][0].startswith("nothing received for ")
    assert result["whileStale"] is True
    stale_events = [event for event in result["events"] if event[0] == "stale"]
    assert stale_events == [["stale", True, True], ["stale", False, True]]
    assert result["first"] == "number"
    assert result["later"] is True


# --- backoff --------------------------------------------------------------------------------


async def test_a_server_that_drops_every_connection_after_its_login_is_retried_ever_later(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        FakeWebSocket.server.closeAfterSubscribe = 4508;
        const client = fakeClient({ backoffBaseMs: 4, random: () => 0.999 });
        const delays = [];
        client.onState((state, { delayMs }) => state === "reconnecting" && delays.push(delayMs));
        await client.connect();
        await client.subscribe("user:7:orders");
        await waitFor(() => delays.length === 6);
        client.close();
        return delays;
        """,
    )
    assert result == [3, 7, 15, 31, 63, 127]  # never back to the first delay


async def test_the_backoff_starts_again_once_a_connection_has_lasted(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const client = fakeClient({ backoffBaseMs: 40, random: () => 0.5, backoffResetMs: 50 });
        const delays = [];
        client.onState((state, { delayMs }) => state === "reconnecting" && delays.push(delayMs));
        await client.connect();
        FakeWebSocket.sockets[0].drop(1006);
        await waitFor(() => client.state === "connected");
        FakeWebSocket.sockets[1].drop(1006);  // at once: still backing off
        await waitFor(() => client.state === "connected");
        await sleep(120);  // past backoffResetMs
        FakeWebSocket.sockets[2].drop(1006);
        await waitFor(() => client.state === "connected");
        return delays;
        """,
    )
    assert result == [20, 40, 20]


# --- tokens ---------------------------------------------------------------------------------


async def test_after_4401_it_asks_for_a_new_token_with_backoff_and_reconnects_by_itself(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const calls = [];
        let outage = false;
        const client = fakeClient({ random: () => 0.5,
          getToken: async (context) => {
            calls.push([context.reason, typeof context.expiresAt]);
            if (outage) throw new Error("503 from the refresh endpoint");
            return `token-${calls.length}`;
          } });
        const events = [];
        client.onState((state, detail) => events.push([state, detail.code ?? null]));
        client.onError((error) => events.push(["error", error.code]));
        await client.connect();
        await client.subscribe("user:7:orders");
        outage = true;
        FakeWebSocket.sockets[0].drop(4401, "token expired");
        await waitFor(() => calls.length === 4);
        outage = false;  // the refresh endpoint recovers
        await waitFor(() => client.state === "connected");
        const ws = FakeWebSocket.sockets.at(-1);
        await waitFor(() => ws.subscribeEntries().length === 1);
        return { calls, events, sockets: FakeWebSocket.sockets.length,
                 token: ws.sentOfType("AUTHENTICATION")[0].payload.token,
                 resumed: ws.subscribeEntries()[0].map((e) => e.topic) };
        """,
    )
    assert result["calls"] == [
        ["connect", "undefined"],
        ["refresh", "string"],  # the refused session's expiresAt
        ["refresh", "string"],
        ["refresh", "string"],
        ["refresh", "string"],
    ]
    assert result["events"] == [
        ["connecting", None],
        ["connected", None],
        ["reconnecting", 4401],
        ["error", "token"],
        ["reconnecting", 0],
        ["error", "token"],
        ["reconnecting", 0],
        ["error", "token"],
        ["reconnecting", 0],
        ["connected", None],
    ]
    assert result["sockets"] == 2
    assert result["token"] == "token-5"
    assert result["resumed"] == [TOPIC]


async def test_a_refused_first_message_token_asks_for_a_new_one(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer();
        const tokens = ["bad", "good"];
        const reasons = [];
        const client = fakeClient({
          getToken: ({ reason }) => { reasons.push(reason); return tokens.shift(); } });
        const events = [];
        client.onClose((event) => events.push(["close", event.code, event.reason]));
        client.onError((error) => events.push(["error", error.code]));
        const session = await client.connect();
        return { reasons, events, username: session.username,
                 first: FakeWebSocket.sockets[0].closedWith };
        """,
    )
    assert result["reasons"] == ["connect", "refresh"]
    assert result["events"] == [
        ["error", "unauthenticated"],
        ["close", 4401, "The token was refused."],
    ]
    assert result["username"] == "alice"
    assert result["first"] == 1000


async def test_when_get_token_has_none_left_it_signs_out_offline(page):
    result = await run(
        page,
        """
        FakeWebSocket.server = makeServer({ expiresInMs: 400 });
        const reasons = [];
        const client = fakeClient({ getToken: ({ reason }) => {
          reasons.push(reason);
          return reason === "refresh" ? null : "t";  // the refresh token was refused
        } });
        const states = [];
        client.onState((state, detail) => states.push([state, detail.code ?? null,
                                                       detail.reason ?? null]));
        await client.connect();
        await waitFor(() => client.state === "offline");
        await sleep(50);
        return { reasons, states, sockets: FakeWebSocket.sockets.length };
        """,
    )
    assert result["reasons"] == ["connect", "refresh"]
    assert result["states"] == [
        ["connecting", None, None],
        ["connected", None, None],
        ["offline", 4401, "no access token (signed out)"],
    ]
    assert result["sockets"] == 1


async def test_token_expiry_is_judged_by_the_servers_clock(page):
    result = await run(
        page,
        """
        // The server's clock is 10 minutes ahead; its token expires in 1 s by that clock. By the
        // page's clock it would look 10 minutes away, and be refreshed far too late.
        FakeWebSocket.server = makeServer({ clockOffsetMs: 600000, expiresInMs: 1000 });
        const contexts = [];
        const client = fakeClient({ heartbeatIntervalMs: 20,
          getToken: async (context) => { contexts.push(context); return "t"; } });
        const first = await client.connect();
        FakeWebSocket.server.expiresInMs = 60000;
        await waitFor(() => client.session.expiresAt !== first.expiresAt, 2000);
        return { offset: client.serverTimeOffsetMs, contexts,
                 ahead: client.serverNow() - Date.now() };
        """,
    )
    assert 599_000 < result["offset"] < 601_000
    assert 599_000 < result["ahead"] < 601_000
    assert [context["reason"] for context in result["contexts"]] == ["connect", "refresh"]
    assert result["contexts"][0]["serverTimeOffsetMs"] == 0  # not measured yet
    assert 599_000 < result["contexts"][1]["serverTimeOffsetMs"] < 601_000


# --- against the real server ----------------------------------------------------------------


async def live_page(page, live):
    await page.unroute_all()
    await open_server_page(page, live.http_url)
    await page.add_script_tag(
        type="module",
        content='import * as rt from "/static/realtime/client.js"; window.rt = rt;',
    )
    await page.wait_for_function("window.rt !== undefined")
    return page


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_it_refreshes_in_band_and_keeps_receiving(
    browser_page, live, trader, trader_token
):
    page = await live_page(browser_page, live)
    tokens = [await sync_to_async(short_token)(trader, 3), trader_token]
    await page.evaluate("(tokens) => { window.tokens = tokens; }", tokens)
    session = await page.evaluate(
        """async (topic) => {
          window.received = [];
          window.client = new rt.RealtimeClient({ getToken: async () => window.tokens.shift() });
          window.client.onTopic(topic, (message) => window.received.push(message.payload));
          const session = await window.client.connect();
          await window.client.subscribe(topic);
          return session;
        }""",
        f"user:{trader.pk}:orders",
    )
    assert session["username"] == "alice"
    await asyncio.sleep(3.5)  # past the first token's expiry: refreshed at 80% of its life
    state = await page.evaluate("[client.state, client.session.expiresAt]")
    assert state[0] == "connected"
    assert state[1] > session["expiresAt"]
    async with httpx.AsyncClient(
        base_url=live.http_url, headers={"Authorization": f"Bearer {trader_token}"}
    ) as api:
        response = await api.post(
            "/api/orders/",
            json={"symbol": "AAPL", "side": "BUY", "orderType": "MARKET", "quantity": "1"},
        )
        assert response.status_code == 201, response.text
    await page.wait_for_function("window.received.length === 1", timeout=5000)
    payload = await page.evaluate("window.received[0]")
    assert payload["id"] == response.json()["id"]
    assert payload["event"] == "created"
    await page.evaluate("client.close()")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_a_4401_in_a_refresh_outage_ends_by_itself_when_tokens_return(
    browser_page, live, trader, trader_token
):
    """Issue 19, item 2: the refresh endpoint fails around the expiry; the server closes with
    4401; the client keeps asking for a token with backoff and reconnects, without a click."""
    page = await live_page(browser_page, live)
    token = await sync_to_async(short_token)(trader, 2.5)
    events = await page.evaluate(
        """async ([shortToken, topic]) => {
          window.events = [];
          window.outage = true;  // the refresh endpoint answers 503
          window.client = new rt.RealtimeClient({
            getToken: async ({ reason }) => {
              events.push(["getToken", reason]);
              if (reason === "connect") return shortToken;
              if (window.outage) throw new Error("refresh endpoint: HTTP 503");
              return window.freshToken;
            },
            backoffBaseMs: 200, backoffCapMs: 400,
          });
          client.onClose((event) => events.push(["close", event.code, event.willReconnect]));
          client.onState((state, detail) => {
            if (state !== "reconnecting") events.push([state, detail.code ?? null]);
          });
          window.received = [];
          client.onTopic(topic, (message) => received.push(message.payload));
          await client.connect();
          await client.subscribe(topic);
          return events;
        }""",
        [token, f"user:{trader.pk}:orders"],
    )
    await page.wait_for_function(
        "events.some((e) => e[0] === 'close' && e[1] === 4401)", timeout=10_000
    )
    await page.wait_for_function(
        "events.filter((e) => e[0] === 'getToken' && e[1] === 'refresh').length >= 4",
        timeout=10_000,
    )
    assert await page.evaluate("client.state") == "reconnecting"
    await page.evaluate("(token) => { window.freshToken = token; window.outage = false; }",
                        trader_token)  # fmt: skip
    await page.wait_for_function("client.state === 'connected'", timeout=10_000)
    order = await post_order(live, trader_token)
    await page.wait_for_function("received.length === 1", timeout=5_000)
    events = await page.evaluate("events")
    assert await page.evaluate("received[0].id") == order["id"]
    assert events[:3] == [["connecting", None], ["getToken", "connect"], ["connected", None]]
    assert ["close", 4401, True] in events
    assert ["offline", 4401] not in events
    assert events[-1] == ["connected", None]
    await page.evaluate("client.dispose()")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_it_signs_out_when_get_token_has_no_token_left(
    browser_page, live, trader
):
    page = await live_page(browser_page, live)
    token = await sync_to_async(short_token)(trader, 2.5)
    result = await page.evaluate(
        """async (token) => {
          const events = [];
          const client = new rt.RealtimeClient({
            // The refresh token was refused: there is no access token to be had.
            getToken: async ({ reason }) => (reason === "refresh" ? null : token),
          });
          client.onClose((event) => events.push(["close", event.code, event.willReconnect]));
          client.onState((state, detail) => events.push([state, detail.code ?? null]));
          await client.connect();
          while (client.state !== "offline") await new Promise((r) => setTimeout(r, 50));
          await new Promise((resolve) => setTimeout(resolve, 300));  // and it stays offline
          return events;
        }""",
        token,
    )
    assert result == [
        ["connecting", None],
        ["connected", None],
        ["close", 4401, False],
        ["offline", 4401],
    ]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_a_msgpack_client_receives_what_a_json_client_does(
    browser_page, live, trader, trader_token, staff_token
):
    """Issue 15: both encodings through a real Daphne, binary frames both ways on msgpack."""
    page = await live_page(browser_page, live)
    topic = f"user:{trader.pk}:orders"
    setup = await page.evaluate(
        """async ([token, topic]) => {
          window.frames = { json: [], msgpack: [] };
          window.received = { json: [], msgpack: [] };
          const spying = (encoding) => class extends WebSocket {
            constructor(url, protocols) {
              super(url, protocols);
              this.addEventListener("message", (event) => frames[encoding].push(
                typeof event.data === "string" ? "received text" : "received binary"));
            }
            send(data) {
              frames[encoding].push(typeof data === "string" ? "sent text" : "sent binary");
              super.send(data);
            }
          };
          window.clients = {};
          for (const encoding of ["json", "msgpack"]) {
            const client = new rt.RealtimeClient({ token, encoding, WebSocket: spying(encoding) });
            client.on("*", (message) => { if (message.topic) received[encoding].push(message); });
            clients[encoding] = client;
          }
          await Promise.all([clients.json.connect(), clients.msgpack.connect()]);
          const acks = await Promise.all([clients.json.subscribe([topic, "market:AAPL"]),
                                          clients.msgpack.subscribe([topic, "market:AAPL"])]);
          return { acks: acks.map((ack) => ack.topics),
                   encodings: [clients.json.encoding, clients.msgpack.encoding] };
        }""",
        [trader_token, topic],
    )
    assert setup == {
        "acks": [[topic, "market:AAPL"], [topic, "market:AAPL"]],
        "encodings": ["json", "msgpack"],
    }
    order = await post_order(live, trader_token)
    async with httpx.AsyncClient(
        base_url=live.http_url, headers={"Authorization": f"Bearer {staff_token}"}
    ) as api:
        response = await api.post(
            "/api/market-data/",
            json={"symbol": "AAPL", "last": "104.5", "bid": "104.25", "ask": "104.75"},
        )
        assert response.status_code == 202, response.text
    wanted = "(m) => m.type === 'ORDER_UPDATE' || m.type === 'MARKET_DATA'"
    await page.wait_for_function(
        f"received.json.filter({wanted}).length === 2"
        f" && received.msgpack.filter({wanted}).length === 2",
        timeout=5_000,
    )
    received = await page.evaluate("received")
    frames = await page.evaluate("frames")
    await page.evaluate("clients.json.dispose(); clients.msgpack.dispose()")

    def updates(messages):
        return [m for m in messages if m["type"] != "SNAPSHOT"]

    def snapshots(messages):
        return [(m["topic"], m["seq"], m["payload"]) for m in messages if m["type"] == "SNAPSHOT"]

    assert updates(received["msgpack"]) == updates(received["json"])  # timestamps included
    assert [m["type"] for m in updates(received["json"])] == ["ORDER_UPDATE", "MARKET_DATA"]
    assert updates(received["json"])[0]["payload"]["id"] == order["id"]
    assert updates(received["json"])[1]["payload"]["last"] == "104.5"  # decimals stay strings
    assert snapshots(received["msgpack"]) == snapshots(received["json"])
    assert set(frames["json"]) == {"sent text", "received text"}
    assert set(frames["msgpack"]) == {"sent binary", "received binary"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_presence_of_two_users_joins_lists_and_leaves(
    browser_page, live, trader, trader_token, staff, staff_token
):
    """Issue 14: staff watch who is on market:AAPL; alice comes and goes."""
    page = await live_page(browser_page, live)
    await page.evaluate(
        """async ([staffToken, aliceToken]) => {
          window.events = [];
          window.staffClient = new rt.RealtimeClient({ token: staffToken });
          window.alice = new rt.RealtimeClient({ token: aliceToken });
          staffClient.onPresence((topic, e) => events.push([topic, e.event, e.username]));
          await Promise.all([staffClient.connect(), alice.connect()]);
          await staffClient.subscribe({ topic: "market:aapl", presence: true, snapshot: false });
        }""",
        [staff_token, trader_token],
    )
    # The server's first look (PRESENCE_INTERVAL_SECS, 1 s) is the baseline, not news: after
    # it, alice's arrival is a join.
    await asyncio.sleep(2)
    refused = await page.evaluate(
        """async () => {
          await alice.subscribe("market:AAPL", { snapshot: false });
          return alice.presence("market:AAPL").then(() => null, (error) => error.code);
        }"""
    )
    assert refused == "forbidden"  # a trader's interest in a symbol is private
    await page.wait_for_function(
        "events.some((e) => e[1] === 'join' && e[2] === 'alice')", timeout=10_000
    )
    members = (await page.evaluate("staffClient.presenceAll('market:AAPL', { limit: 1 })"))[
        "members"
    ]
    assert [member["username"] for member in members] == sorted(
        ["alice", "staff"], key=lambda name: {"alice": trader.pk, "staff": staff.pk}[name]
    )
    assert all(member["connections"] == 1 for member in members)
    await page.evaluate("alice.dispose()")
    await page.wait_for_function(  # after the server's leave grace (5 s)
        "events.some((e) => e[1] === 'leave' && e[2] === 'alice')", timeout=15_000
    )
    events = await page.evaluate("events")
    await page.evaluate("staffClient.dispose()")
    alice_events = [event for event in events if event[2] == "alice"]
    assert alice_events == [["market:AAPL", "join", "alice"], ["market:AAPL", "leave", "alice"]]


# --- docs/PROTOCOL.md's browser examples, run as written --------------------------------------

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def browser_example(heading: str) -> str:
    text = PROTOCOL.read_text()
    section = text[text.index(heading) :]
    return section[section.index("```js\n") + 6 : section.index("\n```\n")]


@pytest.mark.e2e
@pytest.mark.timeout(180)  # the client's backoff may reach its 30 s ceiling twice
@pytest.mark.django_db(transaction=True)
async def test_the_documented_reconnecting_client_gets_a_new_token_after_4401_by_itself(
    browser_page, live, trader, trader_token
):
    """§13.4: an expiry during a refresh outage (503) is followed by a reconnect once the
    endpoint is back; a refused refresh token (401) gives up."""
    page = await live_page(browser_page, live)
    source = browser_example("### 13.4 Browser: a reconnecting client")
    source = source[: source.index("// Usage")] + "window.TradingSocket = TradingSocket;"
    outage = {"status": 503}

    async def refresh_endpoint(route):
        if outage["status"]:
            await route.fulfill(status=outage["status"], json={"detail": "unavailable"})
        else:
            await route.continue_()

    await page.route("**/api/auth/token/refresh/", refresh_endpoint)
    refresh = str(await sync_to_async(RefreshToken.for_user)(trader))
    access = await sync_to_async(short_token)(trader, 2.5)
    await page.evaluate(
        """([source, tokens, topic]) => {
          window.closes = [];
          const Native = WebSocket;
          window.WebSocket = class extends Native {  // to see each socket's close code
            constructor(...args) {
              super(...args);
              this.addEventListener("close", (event) => closes.push(event.code));
            }
          };
          let stored = tokens;
          window.getTokens = () => stored;
          window.setTokens = (next) => { stored = next; };
          window.updates = [];
          window.fatal = [];
          (0, eval)(source);
          window.socket = new TradingSocket({ topics: [topic],
            onUpdate: (message) => updates.push(message.payload),
            onFatal: (reason) => fatal.push(reason) });
          socket.start();
        }""",
        [source, {"access": access, "refresh": refresh}, f"user:{trader.pk}:orders"],
    )
    await page.wait_for_function("closes.includes(4401)", timeout=10_000)
    await asyncio.sleep(1)  # a few refreshes refused with 503 meanwhile
    outage["status"] = 0
    # The reconnect after the outage waits its backoff: up to the client's 30 s ceiling.
    await page.wait_for_function("socket.authenticated === true", timeout=40_000)
    await asyncio.sleep(0.3)  # the resubscription
    order = await post_order(live, trader_token)
    await page.wait_for_function("updates.length === 1", timeout=5_000)
    assert await page.evaluate("updates[0].id") == order["id"]
    assert await page.evaluate("fatal") == []
    assert await page.evaluate("getTokens().access") != access

    # Now the refresh token itself is refused: it gives up, asking for a login.
    outage["status"] = 401
    # The connection has not lasted the 5 s that resets the backoff, so the reconnect that
    # finds the token refused waits up to the ceiling of the attempts made so far (each 503
    # added one): wait that long, plus the reconnect and the refresh.
    ceiling_ms = await page.evaluate("Math.min(30000, 500 * 2 ** socket.attempt)")
    await page.evaluate("setTokens({ ...getTokens(), access: 'expired' }); socket.socket.close()")
    await page.wait_for_function("fatal.length === 1", timeout=ceiling_ms + 10_000)
    assert await page.evaluate("fatal") == ["login required"]
    await page.evaluate("socket.stop()")


async def console_line(page, pattern: str, timeout: float = 5.0) -> str:
    """The first console line of the page matching `pattern`, waiting for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for line in page.console_lines:
            if re.search(pattern, line):
                return line
        if loop.time() > deadline:
            raise AssertionError(f"no console line like {pattern!r} in {page.console_lines}")
        await asyncio.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_documented_browser_msgpack_client_works_as_written(
    browser_page, live, trader, trader_token
):
    page = await live_page(browser_page, live)
    page.console_lines.clear()
    await page.evaluate("(token) => { window.accessToken = token; }", trader_token)
    await page.add_script_tag(type="module", content=browser_example("### 13.7 Browser on"))
    topic = f"user:{trader.pk}:orders"
    await console_line(page, rf"^log: {topic}: \d+ orders at seq \d+$")
    order = await post_order(live, trader_token)
    await console_line(page, rf"^log: order {order['id']} created at 100, seq \d+$")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_a_frozen_server_it_notices_by_itself_and_resumes_once_it_thaws(
    browser_page, trader, trader_token
):
    """Issue 19: a server stopped with SIGSTOP keeps its sockets open; the client's HEARTBEAT
    goes unanswered, it drops the socket, new ones hang opening and time out, and once the
    server runs again it reconnects and resumes."""
    with live_server() as server:  # its own: this one is frozen
        page = await live_page(browser_page, server)
        await page.evaluate(
            """async ([token, topic]) => {
              window.closes = [];
              window.received = [];
              window.client = new rt.RealtimeClient({ token, heartbeatIntervalMs: 300,
                requestTimeoutMs: 700, connectTimeoutMs: 1000, backoffBaseMs: 100,
                backoffCapMs: 300 });
              client.onClose((event) => closes.push(event.reason));
              client.onTopic(topic, (message) => received.push(message.payload));
              await client.connect();
              await client.subscribe(topic);
            }""",
            [trader_token, f"user:{trader.pk}:orders"],
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            await page.wait_for_function(
                "closes.includes('connect timeout')", timeout=10_000
            )  # the heartbeat went unanswered, then a new socket could not open
            frozen = await page.evaluate("[client.state, closes[0]]")
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert frozen == ["reconnecting", "heartbeat timeout"]
        await page.wait_for_function("client.state === 'connected'", timeout=10_000)
        await asyncio.sleep(0.3)  # the resubscription
        order = await post_order(server, trader_token)
        await page.wait_for_function("received.length === 1", timeout=5_000)
        assert await page.evaluate("received[0].id") == order["id"]
        await page.evaluate("client.dispose()")


# A real WebSocket that records, in order, what the page sends and receives on it.
RECORDING_WEB_SOCKET = """
window.frames = [];
window.RecordingWebSocket = class extends WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => frames.push(["in", JSON.parse(event.data)]));
  }
  send(data) {
    frames.push(["out", JSON.parse(data)]);
    super.send(data);
  }
};
"""


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_heartbeats_go_on_after_one_is_answered_rate_limited(
    browser_page, trader, trader_token
):
    """Issue 19, item 3: the server's inbound rate limit refuses most of the client's HEARTBEATs
    with ERROR rate_limited (2 messages a second, HEARTBEATs every 100 ms). Such a reply is an
    answer: the client keeps sending HEARTBEATs, some are answered, and the connection stays."""
    limits = {"RATE_LIMIT_PER_SEC": 2, "RATE_LIMIT_BURST": 2, "RATE_LIMIT_MAX_STRIKES": 1000}
    with live_server(realtime=limits) as server:
        page = await live_page(browser_page, server)
        await page.add_script_tag(content=RECORDING_WEB_SOCKET)
        await page.evaluate(
            """async ([token, topic]) => {
              window.closes = [];
              window.received = [];
              window.client = new rt.RealtimeClient({ token, heartbeatIntervalMs: 100,
                WebSocket: RecordingWebSocket });
              client.onClose((event) => closes.push([event.code, event.reason]));
              client.onTopic(topic, (message) => received.push(message.payload));
              await client.connect();
              await client.subscribe(topic);
            }""",
            [trader_token, f"user:{trader.pk}:orders"],
        )
        refused = """frames.findIndex(([way, m]) => way === "in" && m.type === "ERROR"
            && m.payload.code === "rate_limited"
            && frames.some(([w, s]) => w === "out" && s.id === m.id && s.type === "HEARTBEAT"))"""
        await page.wait_for_function(f"({refused}) >= 0", timeout=10_000)
        # After the first refusal: more HEARTBEATs go out, and some of them are answered.
        await page.wait_for_function(
            f"""(() => {{
              const after = frames.slice({refused} + 1);
              const sent = after.filter(([w, m]) => w === "out" && m.type === "HEARTBEAT");
              const answered = after.filter(([w, m]) => w === "in" && m.type === "HEARTBEAT"
                && sent.some(([, s]) => s.id === m.id));
              return sent.length >= 10 && answered.length >= 2;
            }})()""",
            timeout=10_000,
        )
        assert await page.evaluate("[client.state, closes]") == ["connected", []]
        # The socket is live: an order placed now arrives on it.
        order = await post_order(server, trader_token)
        await page.wait_for_function("received.length === 1", timeout=5_000)
        assert await page.evaluate("received[0].id") == order["id"]
        await page.evaluate("client.dispose()")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_against_the_server_going_offline_drops_at_once_and_online_reconnects(
    browser_page, live, trader, trader_token
):
    """Chromium's emulated network loss fires `offline`; the client does not wait for a
    heartbeat to fail, and `online` brings it back without waiting out its backoff."""
    page = await live_page(browser_page, live)
    await page.evaluate(
        """async (token) => {
          window.events = [];
          window.client = new rt.RealtimeClient({ token, backoffBaseMs: 60000, random: () => 0.9 });
          client.onClose((event) => events.push(["close", event.reason]));
          client.onState((state) => events.push([state]));
          await client.connect();
        }""",
        trader_token,
    )
    await page.context.set_offline(True)
    try:
        await page.wait_for_function("client.state === 'reconnecting'", timeout=5_000)
    finally:
        await page.context.set_offline(False)
    await page.wait_for_function("client.state === 'connected'", timeout=5_000)
    events = await page.evaluate("events")
    await page.evaluate("client.dispose()")
    assert events == [
        ["connecting"],
        ["connected"],
        ["close", "the browser went offline"],
        ["reconnecting"],  # for 27 s, but for the `online` event
        ["connected"],
    ]
