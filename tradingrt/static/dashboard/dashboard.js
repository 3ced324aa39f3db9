/**
 * The live dashboard: signs in, takes orders, positions and strategies from the snapshots /ws
 * sends with each first subscription, keeps them current from the topics' updates through the
 * realtime client, and shows the connection's health; places and cancels orders over REST and
 * draws prices and P&L as they stream in.
 *
 * After a reconnect the client resumes every topic where it left off, so the updates missed
 * meanwhile are replayed into the tables; only a topic whose history is gone is reloaded, from
 * the snapshot that comes with the `reset` (over REST only if no snapshot can be had). A row only
 * moves forward in its object's `version`, whichever of a snapshot, a replay or a live update
 * delivers it first; a `deleted` update removes it.
 *
 * `?encoding=msgpack` in the page's address makes the socket speak MessagePack (PROTOCOL 3.3).
 */

import { CloseCode, RealtimeClient, State } from "realtime-client";

import { PnlChart, PriceChart } from "./charts.js";
import {
  formatMoney,
  formatPercent,
  formatPrice,
  formatQuantity,
  formatTime,
  signClass,
  sum,
} from "./format.js";
import { Presence } from "./presence.js";
import { ApiError, Session } from "./session.js";
import { LiveTable, flashRow } from "./tables.js";
import { OrderForm, renderCancel } from "./trade.js";
import { UserNames } from "./users.js";

const MAX_ORDER_ROWS = 200;
const RESET_REASONS = {
  expired: "history expired",
  epoch: "the server's history was reset",
  unavailable: "history unavailable",
  no_snapshot: "no snapshot, loaded over REST",
};
const MAX_MARKET_SYMBOLS = 12; // market:SYMBOL topics for the symbols traded, at most
const STATUS_POLL_MS = 5000;
const ACTIVITY_ITEMS = 30;
const KINDS = ["orders", "positions", "strategies"];
const OPEN_STATUSES = new Set(["NEW", "PARTIALLY_FILLED"]);
const AGE_TICK_MS = 1000; // how often the prices' ages are redrawn

/**
 * Tunable from the console, or before the page loads as `window.tradingrtDashboardSettings`
 * (the browser tests do; so may a server run with a shorter HEARTBEAT_INTERVAL_SECS).
 */
const settings = {
  // A price is marked stale when its symbol has not ticked for this long, or whenever the
  // connection cannot vouch for it: not connected, or the client `stale`.
  priceStaleAfterMs: 30_000,
  // The client is stale after this long with nothing at all, not even a heartbeat: 2.5 of the
  // server's 30 s heartbeat intervals. Read once, when the client is made.
  staleAfterMs: 75_000,
  ...globalThis.tradingrtDashboardSettings,
};
const ENCODING = new URLSearchParams(location.search).get("encoding") === "msgpack" ? "msgpack" : "json";

const CLOSE_REASONS = {
  [CloseCode.NORMAL]: "closed",
  [CloseCode.ABNORMAL]: "connection lost",
  [CloseCode.OPERATOR_DISCONNECT]: "disconnected by an operator",
  [CloseCode.UNAUTHENTICATED]: "session expired",
  [CloseCode.USER_DEACTIVATED]: "account deactivated",
  [CloseCode.TOO_MANY_CONNECTIONS]: "too many connections",
  [CloseCode.SESSIONS_REVOKED]: "sessions revoked: signing in again",
  [CloseCode.RATE_LIMITED]: "rate limited",
  [CloseCode.STREAM_INTERRUPTED]: "the server's update stream was interrupted",
  [CloseCode.SLOW_CONSUMER]: "too slow to keep up",
};

const $ = (id) => document.getElementById(id);
const isFlat = (quantity) => /^-?0*(\.0*)?$/.test(quantity);

// --- the session, the client and the tables ----------------------------------------------

const session = new Session({ onExpired: (message) => signOut(message) });
const api = (path, options) => session.api(path, options);
const client = new RealtimeClient({
  // A token, refreshed when the server refused the last one. While the refresh endpoint fails
  // this throws, and the client tries again with backoff; once the refresh token itself is
  // refused (signed out) there is none: null, and the client goes offline.
  getToken: async ({ reason }) => {
    if (!session.signedIn) return null;
    try {
      return await session.accessToken({ forceRefresh: reason === "refresh" });
    } catch (error) {
      if (!session.signedIn) return null;
      throw error;
    }
  },
  encoding: ENCODING,
  staleAfterMs: settings.staleAfterMs,
});
let me = null; // the signed-in user's id, once the socket has authenticated
let scopeAll = false; // staff (or a permission holder) sees everyone's rows

const names = new UserNames({ api, onNames: () => renderNames() });
// Declared before the tables: their watchers column reads both.
const presence = new Presence({ client, names, onChange: () => renderPresence() });
let presenceShown = false; // staff see presence
const userText = (id) => names.text(id);
const userTitle = (id) => (id === null || id === undefined ? "" : `user #${id}`);
const statusBadge = (status) => `badge badge-${String(status).toLowerCase().replace(/_/g, "-")}`;
const pnl = (field) => ({ field, num: true, text: (r) => formatMoney(r[field], { signed: true }), cls: (r) => signClass(r[field]) });
const isOpen = (order) => OPEN_STATUSES.has(order.status);
const user = (field) => ({ field, user: true, text: (r) => userText(r[field]), title: (r) => userTitle(r[field]) });

const tables = {
  positions: new LiveTable($("positions"), {
    columns: [
      user("userId"),
      { field: "symbol", header: true, text: (r) => r.symbol, cls: () => "symbol" },
      { field: "quantity", num: true, text: (r) => formatQuantity(r.quantity), cls: (r) => (r.quantity.startsWith("-") ? "neg" : "") },
      { field: "averagePrice", num: true, text: (r) => formatPrice(r.averagePrice) },
      { field: "marketPrice", num: true, text: (r) => formatPrice(r.marketPrice) },
      { field: "marketValue", num: true, text: (r) => formatMoney(r.marketValue) },
      pnl("unrealizedPnl"),
      pnl("realizedPnl"),
      { ...pnl("totalPnl"), cls: (r) => `strong ${signClass(r.totalPnl)}` },
      { field: "portfolioWeight", num: true, text: (r) => formatPercent(r.portfolioWeight) },
    ],
    compare: (a, b) => a.symbol.localeCompare(b.symbol) || a.userId - b.userId,
    rowClass: (r) => (isFlat(r.quantity) ? "closed" : ""),
  }),
  orders: new LiveTable($("orders"), {
    columns: [
      { field: "id", num: true, text: (r) => String(r.id), cls: () => "muted" },
      user("userId"),
      { field: "createdAt", text: (r) => formatTime(r.createdAt), cls: () => "muted" },
      { field: "symbol", header: true, text: (r) => r.symbol, cls: () => "symbol" },
      { field: "side", text: (r) => r.side, cls: (r) => (r.side === "BUY" ? "side-buy" : "side-sell") },
      { field: "orderType", text: (r) => r.orderType.replace("_", " "), cls: () => "muted" },
      { field: "quantity", num: true, text: (r) => formatQuantity(r.quantity) },
      { field: "price", num: true, text: (r) => (r.price === null ? "market" : formatPrice(r.price)) },
      { field: "filledQuantity", num: true, text: (r) => formatQuantity(r.filledQuantity) },
      { field: "averageFillPrice", num: true, text: (r) => formatPrice(r.averageFillPrice) },
      { field: "status", text: (r) => r.status.replace("_", " "), cls: (r) => statusBadge(r.status) },
      {
        field: "actions",
        // Only the user's own open orders: staff cancel others' through the API or the admin.
        key: (r) => String(isOpen(r) && r.userId === me),
        render: (cell, r) => isOpen(r) && r.userId === me && renderCancel(cell, r, { api, log }),
        cls: () => "actions",
      },
    ],
    compare: (a, b) => b.id - a.id,
    limit: MAX_ORDER_ROWS,
    keep: isOpen, // older open orders stay, in the table and in the count
  }),
  strategies: new LiveTable($("strategies"), {
    columns: [
      { field: "name", header: true, text: (r) => r.name, cls: () => "strong" },
      user("ownerId"),
      { field: "status", text: (r) => r.status, cls: (r) => statusBadge(r.status) },
      { field: "orderCount", num: true, text: (r) => String(r.metrics?.orderCount ?? "—") },
      { field: "filledOrderCount", num: true, text: (r) => String(r.metrics?.filledOrderCount ?? "—") },
      { field: "winRate", num: true, text: (r) => formatPercent(r.metrics?.winRate) },
      { ...pnl("realizedPnl"), text: (r) => formatMoney(r.metrics?.realizedPnl, { signed: true }), cls: (r) => signClass(r.metrics?.realizedPnl) },
      { ...pnl("unrealizedPnl"), text: (r) => formatMoney(r.metrics?.unrealizedPnl, { signed: true }), cls: (r) => signClass(r.metrics?.unrealizedPnl) },
      { ...pnl("totalPnl"), text: (r) => formatMoney(r.metrics?.totalPnl, { signed: true }), cls: (r) => `strong ${signClass(r.metrics?.totalPnl)}` },
      { field: "watching", text: (r) => watchersText(r.id), cls: () => "col-presence" },
    ],
    compare: (a, b) => a.name.localeCompare(b.name) || a.id - b.id,
  }),
};

/** Who else watches a strategy (staff, with presence): their names, or "—". */
function watchersText(strategyId) {
  if (!presenceShown) return "";
  const watchers = presence.on(`strategy:${strategyId}`).filter((id) => id !== me);
  return watchers.length ? watchers.map((id) => names.text(id)).sort().join(", ") : "—";
}

/** Names arrived: show them wherever ids were shown. */
function renderNames() {
  for (const table of Object.values(tables)) table.refresh();
}

// --- charts ---------------------------------------------------------------------------------

const priceChart = new PriceChart({
  container: $("price-chart"),
  picker: $("price-symbol"),
  summary: $("price-summary"),
});
const pnlChart = new PnlChart({ container: $("pnl-chart"), summary: $("pnl-summary"), read: pnlTotals });

function pnlTotals() {
  const positions = tables.positions.values();
  return {
    total: sum(positions.map((p) => p.totalPnl)),
    unrealized: sum(positions.map((p) => p.unrealizedPnl)),
    realized: sum(positions.map((p) => p.realizedPnl)),
  };
}

// --- trading --------------------------------------------------------------------------------

const orderForm = new OrderForm($("order-form"), { api, log });
tables.strategies.onChange(() => {
  orderForm.setStrategies(tables.strategies.values().filter((s) => s.ownerId === me));
  watchStrategies();
});

// --- presence -------------------------------------------------------------------------------

/** Be seen watching the strategies on screen; staff also follow who watches them. */
function watchStrategies() {
  if (me === null) return;
  const shown = tables.strategies.values();
  const ids = (presenceShown ? shown : shown.filter((s) => s.ownerId === me)).map((s) => s.id);
  presence.watchStrategies(ids, { watch: presenceShown }).then((added) => added && showTopics());
}

function renderPresence() {
  if (!presenceShown) return;
  tables.strategies.refresh();
  const online = [...presence.online()].sort(
    ([a], [b]) => names.text(a).localeCompare(names.text(b)) || a - b,
  );
  const items = online.map(([userId, since]) => {
    const item = document.createElement("li");
    item.dataset.userId = String(userId);
    const name = document.createElement("span");
    name.textContent = userId === me ? `${names.text(userId)} (you)` : names.text(userId);
    const when = document.createElement("span");
    when.className = "muted";
    when.textContent = since ? `since ${formatTime(since)}` : "";
    item.append(name, when);
    return item;
  });
  $("online").replaceChildren(...items);
  $("online-empty").hidden = online.some(([userId]) => userId !== me);
}

// --- market ticker --------------------------------------------------------------------------

const ticker = {
  items: new Map(), // symbol -> {li, last, receivedAt}
  timer: null,

  ensure(symbol) {
    if (this.items.has(symbol)) return this.items.get(symbol);
    const li = document.createElement("li");
    li.className = "tick";
    li.dataset.symbol = symbol;
    li.innerHTML =
      '<span class="tick-symbol"></span><span class="tick-last num">—</span>' +
      '<span class="tick-change num" aria-hidden="true"></span>' +
      '<span class="tick-quote num muted">no ticks yet</span><span class="tick-age small"></span>';
    li.querySelector(".tick-symbol").textContent = symbol;
    const list = $("ticker");
    const after = [...list.children].find((other) => other.dataset.symbol > symbol);
    list.insertBefore(li, after || null);
    const item = { li, last: null, receivedAt: null };
    this.items.set(symbol, item);
    $("ticker-empty").hidden = true;
    priceChart.ensure(symbol);
    orderForm.setSymbols(this.items.keys());
    return item;
  },

  /** A position's mark, shown until the first tick of its symbol arrives. */
  mark(symbol, price) {
    const item = this.ensure(symbol);
    if (item.last === null && price !== null) {
      item.li.querySelector(".tick-last").textContent = formatPrice(price);
      item.li.querySelector(".tick-quote").textContent = "last mark";
    }
  },

  tick(tick, { flash = true } = {}) {
    const { symbol, last, bid, ask } = tick;
    const item = this.ensure(symbol);
    const change = item.last === null ? 0 : Number(last) - Number(item.last);
    item.last = last;
    item.receivedAt = Date.now();
    item.li.querySelector(".tick-last").textContent = formatPrice(last);
    const arrow = item.li.querySelector(".tick-change");
    arrow.textContent = change > 0 ? "▲" : change < 0 ? "▼" : "";
    item.li.dataset.direction = change > 0 ? "up" : change < 0 ? "down" : "flat";
    item.li.querySelector(".tick-quote").textContent =
      bid || ask ? `${formatPrice(bid)} / ${formatPrice(ask)}` : "";
    this.age(item, Date.now());
    priceChart.tick(tick);
    if (flash) flashRow(item.li);
  },

  /**
   * Show how old a price is, and mark it stale when the page cannot vouch for it: its symbol
   * has not ticked for `priceStaleAfterMs`, or the connection is not live, or nothing at all
   * (not even a heartbeat) has come for the client's `staleAfterMs`.
   */
  age(item, now) {
    if (item.receivedAt === null) return;
    const seconds = Math.max(0, Math.floor((now - item.receivedAt) / 1000));
    const stale = !streamIsLive() || now - item.receivedAt > settings.priceStaleAfterMs;
    const ago = seconds < 1 ? "just now" : `${formatAge(seconds)} ago`;
    const text = stale ? `stale · ${ago}` : ago;
    const element = item.li.querySelector(".tick-age");
    if (element.textContent !== text) element.textContent = text;
    if (item.li.dataset.stale !== String(stale)) item.li.dataset.stale = String(stale);
  },

  start() {
    this.stop();
    this.timer = setInterval(showFreshness, AGE_TICK_MS);
  },

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  },

  clear() {
    this.items.clear();
    $("ticker").replaceChildren();
    $("ticker-empty").hidden = false;
  },
};

function formatAge(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h`;
}

// --- the connection -------------------------------------------------------------------------

// Silence (a frozen server, a dead network): every price is stale at once, and again fresh
// with the next message.
client.onStale(() => showFreshness());
let statusTimer = null;
let lastConnectionId = null;
let connections = 0; // authenticated connections since sign-in: all but the first resume
let recovery = null; // what the latest resume or repair did, shown beside the state
const snapshotIds = new Map(); // topic -> ids of the snapshot being received

client.onState((state, detail) => {
  const box = $("connection");
  box.dataset.state = state;
  document.body.dataset.connection = state; // the page says when what it shows may be stale
  const why = CLOSE_REASONS[detail.code] || (detail.code ? `code ${detail.code}` : "");
  // The box is a live region: only a change of state is read aloud, not each attempt, whose
  // line goes to the activity log (not live) instead.
  setText(box.querySelector(".connection-label"), {
    [State.CONNECTING]: "Connecting…",
    [State.CONNECTED]: "Live",
    [State.RECONNECTING]: `Reconnecting${why ? ` (${why})` : ""}…`,
    [State.OFFLINE]: `Offline${why && detail.code !== CloseCode.NORMAL ? `: ${why}` : ""}`,
  }[state]);
  $("reconnect").hidden = !(state === State.OFFLINE && session.signedIn);
  if (state === State.RECONNECTING) {
    log(`Reconnect attempt ${detail.attempt} in ${(detail.delayMs / 1000).toFixed(1)} s`, "warn");
  }
  if (state === State.CONNECTED) {
    connections += 1;
    showEncoding();
    if (connections > 1) presence.reload(); // joins and leaves while away were not sent
  }
  if (state === State.OFFLINE && detail.code === CloseCode.USER_DEACTIVATED) {
    signOut("This account was deactivated.");
  }
  showFreshness();
});

/** Whether the stream can vouch for what the page shows: connected, and heard from lately. */
function streamIsLive() {
  return client.state === State.CONNECTED && !client.stale;
}

/** Every price's age and staleness, and the page's "Not live" notice, as of now. */
function showFreshness() {
  const now = Date.now();
  for (const item of ticker.items.values()) ticker.age(item, now);
  $("stale-notice").hidden = !session.signedIn || streamIsLive();
}

client.onClose(({ code, reason, willReconnect }) => {
  const why = CLOSE_REASONS[code] || reason || "closed";
  log(`Connection closed: ${code} ${why}${willReconnect ? "" : "; not reconnecting"}`, code === 1000 ? "" : "warn");
});

client.onError((error) => log(`${error.code}: ${error.message}`, "error"));

client.on("AUTHENTICATION", (message) => {
  const { connectionId, expiresAt, username } = message.payload;
  $("session-connection").textContent = connectionId.slice(0, 12);
  $("session-connection").title = connectionId;
  $("session-expires").textContent = formatTime(expiresAt);
  $("account-name").textContent = username;
  names.learn(message.payload.userId, username);
  if (connectionId === lastConnectionId) {
    log(`Token refreshed; now expires ${formatTime(expiresAt)}`, "ok");
  } else {
    log(`Connected as ${username}`, "ok");
    if (connections > 1) log(`Resuming ${client.topics.length} topics`, "ok");
  }
  lastConnectionId = connectionId;
});

client.on("ORDER_UPDATE", ({ payload }) => {
  applyUpdate(tables.orders, payload);
  watchSymbols([payload.symbol]);
  updateSummary();
});

client.on("POSITION_UPDATE", ({ payload }) => {
  applyUpdate(tables.positions, payload);
  ticker.mark(payload.symbol, payload.marketPrice);
  watchSymbols([payload.symbol]);
  updateSummary();
});

client.on("STRATEGY_UPDATE", ({ payload }) => applyUpdate(tables.strategies, payload));
client.on("MARKET_DATA", ({ payload }) => ticker.tick(payload));

function applyUpdate(table, payload) {
  if (payload.event === "deleted") {
    table.remove(payload);
  } else {
    table.upsert(payload);
  }
}

/** The kind of state a topic carries: a table's id, or "market". */
function kindOf(topic) {
  if (topic.startsWith("market:")) return "market";
  if (topic === "strategies" || /^strategy:\d+$/.test(topic)) return "strategies";
  const kind = topic.split(":").at(-1);
  return KINDS.includes(kind) ? kind : null;
}

// A snapshot is the topic's whole state: its pages' rows replace the table's.
client.onSnapshot(({ topic, items, first, last }) => {
  if (presence.isPresenceOnly(topic)) return; // filtered to nothing: not the table's state
  const kind = kindOf(topic);
  if (kind === "market") {
    for (const tick of items) ticker.tick(tick, { flash: false });
    return;
  }
  const table = tables[kind];
  if (!table) return;
  if (first) snapshotIds.set(topic, new Set());
  const ids = snapshotIds.get(topic);
  for (const item of items) {
    ids.add(item.id);
    table.upsert(item, { flash: false });
    if (kind === "positions") ticker.mark(item.symbol, item.marketPrice);
  }
  if (!last) return;
  snapshotIds.delete(topic);
  table.retain(ids);
  const rows = table.values();
  if (kind === "orders") watchSymbols(rows.map((o) => o.symbol));
  if (kind === "positions") watchSymbols(rows.filter((p) => !isFlat(p.quantity)).map((p) => p.symbol));
  updateSummary();
});

client.onRecovered(({ topic, replayed, cause }) => {
  const verb = cause === "reconnect" || cause === "reload" ? "Resumed" : "Repaired";
  noteRecovery(verb, { replayed });
  if (replayed || verb === "Repaired") {
    log(`${verb} ${topic}: ${plural(replayed, "missed update")} replayed`, "ok");
  }
});

client.onReset(({ topic, reason, snapshot }) => {
  const why = RESET_REASONS[reason] || reason;
  noteRecovery("Reloaded", { reason: why });
  if (presence.isPresenceOnly(topic)) return;
  log(`Reloading ${topic} (${why})${snapshot ? "" : " over REST"}`, "warn");
  if (!snapshot) {
    const kind = kindOf(topic);
    if (tables[kind]) reloadOverRest(kind);
  }
});

/**
 * Tell, beside the connection's state, what the latest resume did: "Resumed: 12 missed updates
 * replayed", or "Reloaded: history expired" when a topic's history was gone. The events of one
 * resume (every topic, on one connection) add up; a later repair starts afresh.
 */
function noteRecovery(verb, { replayed = 0, reason = null }) {
  const connectionId = client.session?.connectionId ?? null;
  const same = recovery && recovery.connectionId === connectionId && recovery.group === verbGroup(verb);
  if (!same) {
    recovery = { connectionId, group: verbGroup(verb), verb, replayed: 0, reasons: new Set() };
  }
  recovery.replayed += replayed;
  if (reason) {
    recovery.verb = "Reloaded";
    recovery.reasons.add(reason);
  }
  recovery.at = new Date();
  const text =
    recovery.verb === "Reloaded"
      ? `Reloaded: ${[...recovery.reasons].join(", ")}`
      : `${recovery.verb}: ${plural(recovery.replayed, "missed update")} replayed`;
  const element = $("recovery");
  element.hidden = false;
  element.dataset.kind = recovery.verb.toLowerCase();
  setText(element.querySelector(".recovery-text"), text); // one note per resume, not per topic
  const time = element.querySelector("time");
  time.dateTime = recovery.at.toISOString();
  setText(time, formatTime(recovery.at.toISOString()));
}

/**
 * Set an element's text only if it differs: rewriting the same text still replaces its node,
 * and a screen reader may read a live region again for that.
 */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function verbGroup(verb) {
  return verb === "Repaired" ? "repair" : "resume";
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** Subscribe to the market data of newly seen symbols, up to MAX_MARKET_SYMBOLS. */
function watchSymbols(symbols) {
  const held = client.topics.filter((topic) => topic.startsWith("market:"));
  const fresh = [...new Set(symbols)]
    .map((symbol) => `market:${symbol.toUpperCase()}`)
    .filter((topic) => !held.includes(topic))
    .slice(0, Math.max(0, MAX_MARKET_SYMBOLS - held.length));
  if (!fresh.length) return;
  for (const topic of fresh) ticker.ensure(topic.slice("market:".length));
  client.subscribe(fresh).then(() => showTopics(), () => {});
}

/**
 * The topics of this user's view: the global ones where the server allows them (staff), the
 * user's own otherwise. Each first subscription brings the topic's snapshot.
 */
async function subscribeAll(userId, canViewStatus) {
  scopeAll = false;
  if (canViewStatus) {
    // Presence on `orders`: other staff's dashboards (and monitors) are online too.
    const kinds = KINDS.map((topic) => (topic === "orders" ? { topic, presence: true } : topic));
    const ack = await client.subscribe(kinds);
    scopeAll = ack.topics.length === KINDS.length;
    if (!scopeAll && ack.topics.length) await client.unsubscribe(ack.topics);
  }
  if (!scopeAll) {
    await client.subscribe(KINDS.map((kind) => `user:${userId}:${kind}`));
  }
  document.body.classList.toggle("scope-all", scopeAll);
  names.enable(scopeAll);
  if (scopeAll) renderNames();
  showTopics();
  log(`Subscribed to ${client.topics.length} topics`, "ok");
}

/**
 * Staff see who is online (present on any user's `user:{id}:orders`, or on `orders`) and who
 * watches each strategy; every dashboard is seen watching the strategies it shows.
 */
async function startPresence() {
  presenceShown = scopeAll;
  document.body.classList.toggle("presence-on", presenceShown);
  $("online-panel").hidden = !presenceShown;
  watchStrategies();
  if (!presenceShown) return;
  await presence.follow(["orders"]);
  try {
    await presence.watchUsers(await names.all());
  } catch (error) {
    log(`Could not list users for presence: ${error.message}`, "error");
  }
  showTopics();
  renderPresence();
}

/** The fallback when a topic's snapshot cannot be had: its kind's rows over REST. */
async function reloadOverRest(kind) {
  try {
    const rows = await session.api(`/api/${kind}/`);
    for (const row of rows) tables[kind].upsert(row, { flash: false });
    tables[kind].retain(new Set(rows.map((row) => row.id)));
    if (kind === "positions") {
      for (const position of rows) ticker.mark(position.symbol, position.marketPrice);
    }
    watchSymbols(rows.map((row) => row.symbol).filter(Boolean));
    updateSummary();
  } catch (error) {
    log(`Could not reload ${kind}: ${error.message}`, "error");
  }
}

function showTopics(topics = client.topics) {
  const list = Array.isArray(topics) ? topics : client.topics;
  const shown = list.filter((topic) => !presence.isPresenceOnly(topic));
  const chips = [...shown].sort().map((topic) => {
    const chip = document.createElement("span");
    chip.className = "topic";
    chip.textContent = topic;
    return chip;
  });
  const presenceOnly = list.length - shown.length;
  if (presenceOnly) {
    const note = document.createElement("span");
    note.className = "muted small";
    note.textContent = `and ${presenceOnly} for presence only`;
    chips.push(note);
  }
  $("session-topics").replaceChildren(...chips);
  if (!chips.length) $("session-topics").textContent = "—";
}

/** The summary cards, added up exactly from the rows' decimal strings; and a P&L sample. */
function updateSummary() {
  const positions = tables.positions.values();
  const setMoney = (id, value) => {
    $(id).textContent = formatMoney(value, { signed: true });
    $(id).className = `stat-value num ${signClass(value)}`;
  };
  const totals = pnlTotals();
  setMoney("sum-total", totals.total);
  setMoney("sum-unrealized", totals.unrealized);
  setMoney("sum-realized", totals.realized);
  $("sum-exposure").textContent = formatMoney(sum(positions.map((p) => p.exposure)));
  $("sum-open").textContent = String(tables.orders.values().filter(isOpen).length);
  if (positions.length) pnlChart.changed();
}

// --- staff: /ws/status ----------------------------------------------------------------------

async function pollStatus() {
  try {
    const status = await session.api("/ws/status");
    $("server-panel").hidden = false;
    $("server-connections").textContent = String(status.activeConnections);
    $("server-users").textContent = String(status.usersOnline ?? "—");
    $("server-processes").textContent = String(status.servers?.length ?? "—");
    const rows = Object.entries(status.topicSubscriptions || {})
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .slice(0, 10)
      .map(([topic, count]) => {
        const tr = document.createElement("tr");
        const name = document.createElement("td");
        name.className = "mono";
        name.textContent = topic;
        const value = document.createElement("td");
        value.className = "num";
        value.textContent = String(count);
        tr.append(name, value);
        return tr;
      });
    $("server-topics").replaceChildren(...rows);
    $("server-updated").textContent = `Updated ${formatTime(status.timestamp)}`;
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      $("server-panel").hidden = true;
      return false;
    }
    $("server-updated").textContent = "Status unavailable";
    return null;
  }
}

function startStatusPolling() {
  stopStatusPolling();
  statusTimer = setInterval(pollStatus, STATUS_POLL_MS);
}

function stopStatusPolling() {
  if (statusTimer !== null) clearInterval(statusTimer);
  statusTimer = null;
}

// --- activity log ---------------------------------------------------------------------------

function log(text, kind = "") {
  const item = document.createElement("li");
  item.className = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString("en-GB", { hour12: false });
  item.append(time, document.createTextNode(text));
  const list = $("activity");
  list.prepend(item);
  while (list.children.length > ACTIVITY_ITEMS) list.lastElementChild.remove();
}

// --- sign in and out ------------------------------------------------------------------------

async function start({ focus = false } = {}) {
  $("login-view").hidden = true;
  $("dashboard-view").hidden = false;
  $("account").hidden = false;
  $("connection").hidden = false;
  if (focus) $("dashboard-title").focus(); // not left on the vanished sign-in form
  connections = 0;
  recovery = null;
  $("recovery").hidden = true;
  ticker.start();
  try {
    const [authenticated, canViewStatus] = await Promise.all([client.connect(), pollStatus()]);
    me = authenticated.userId;
    showEncoding();
    tables.orders.refresh(); // Cancel buttons for this user's orders
    orderForm.setStrategies(tables.strategies.values().filter((s) => s.ownerId === me));
    await subscribeAll(me, canViewStatus === true);
    if (canViewStatus) {
      pollStatus(); // now that this connection's subscriptions count
      startStatusPolling();
    }
    await startPresence();
  } catch (error) {
    log(`Could not start: ${error.message}`, "error");
  }
}

/** Which encoding the socket speaks; said only when it is not the default. */
function showEncoding() {
  const badge = $("encoding");
  const encoding = client.encoding;
  badge.hidden = encoding === "json";
  badge.textContent = encoding === "msgpack" ? "MessagePack" : encoding;
}

function signOut(message = "") {
  const topics = client.topics;
  client.close();
  client.unsubscribe(topics); // offline: forgets them, so the next user starts clean
  session.signOut();
  stopStatusPolling();
  snapshotIds.clear();
  me = null;
  scopeAll = false;
  document.body.classList.remove("scope-all");
  names.clear();
  presence.clear();
  presenceShown = false;
  document.body.classList.remove("presence-on");
  $("online-panel").hidden = true;
  for (const table of Object.values(tables)) table.clear();
  ticker.stop();
  ticker.clear();
  priceChart.clear();
  pnlChart.clear();
  orderForm.reset();
  $("dashboard-view").hidden = true;
  $("account").hidden = true;
  $("connection").hidden = true;
  $("server-panel").hidden = true;
  $("stale-notice").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  $("login-password").value = "";
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector("button[type=submit]");
  $("login-error").textContent = "";
  button.disabled = true;
  try {
    await session.signIn($("login-username").value.trim(), $("login-password").value);
    start({ focus: true });
  } catch (error) {
    $("login-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", () => signOut());
$("reconnect").addEventListener("click", () => client.connect().catch(() => {}));

if (session.signedIn) start();

// For debugging from the console, and for the browser tests.
globalThis.tradingrtDashboard = { client, session, tables, settings, priceChart, pnlChart, names, presence };
