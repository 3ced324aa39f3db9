/**
 * The live dashboard: signs in, takes orders, positions and strategies from the snapshots /ws
 * sends with each first subscription, keeps them current from the topics' updates through the
 * realtime client, and shows the connection's health.
 *
 * After a reconnect the client resumes every topic where it left off, so the updates missed
 * meanwhile are replayed into the tables; only a topic whose history is gone is reloaded, from
 * the snapshot that comes with the `reset` (over REST only if no snapshot can be had). A row only
 * moves forward in its object's `version`, whichever of a snapshot, a replay or a live update
 * delivers it first; a `deleted` update removes it.
 */

import { CloseCode, RealtimeClient, State } from "realtime-client";

import {
  formatMoney,
  formatPercent,
  formatPrice,
  formatQuantity,
  formatTime,
  signClass,
  sum,
} from "./format.js";
import { ApiError, Session } from "./session.js";

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

const CLOSE_REASONS = {
  [CloseCode.NORMAL]: "closed",
  [CloseCode.ABNORMAL]: "connection lost",
  [CloseCode.OPERATOR_DISCONNECT]: "disconnected by an operator",
  [CloseCode.UNAUTHENTICATED]: "session expired",
  [CloseCode.USER_DEACTIVATED]: "account deactivated",
  [CloseCode.RATE_LIMITED]: "rate limited",
  [CloseCode.STREAM_INTERRUPTED]: "the server's update stream was interrupted",
  [CloseCode.SLOW_CONSUMER]: "too slow to keep up",
};

const $ = (id) => document.getElementById(id);
const isFlat = (quantity) => /^-?0*(\.0*)?$/.test(quantity);

// --- tables ---------------------------------------------------------------------------------

/**
 * A table whose rows are keyed by `id` and updated in place; changed rows flash.
 * Columns are `{field, text(row), cls?(row)}`; `cls` adds classes to the cell.
 */
class LiveTable {
  constructor(table, { columns, compare, rowClass = () => "", limit = Infinity }) {
    this.table = table;
    this.body = table.tBodies[0];
    this.columns = columns;
    this.compare = compare;
    this.rowClass = rowClass;
    this.limit = limit;
    this.rows = new Map(); // id -> {data, tr}
    this.removed = new Map(); // id -> the version that deleted it: older states stay out
    this.kind = table.id;
  }

  /** Insert or update a row; ignored unless newer than what is shown. Returns true if shown. */
  upsert(data, { flash = true } = {}) {
    const current = this.rows.get(data.id);
    if (current && !isNewer(data, current.data)) return false;
    const removedAt = this.removed.get(data.id);
    if (removedAt !== undefined && !(data.version > removedAt)) return false;
    let tr;
    if (current) {
      tr = current.tr;
    } else {
      tr = document.createElement("tr");
      tr.dataset.id = String(data.id);
      for (const column of this.columns) {
        const cell = document.createElement(column.header ? "th" : "td");
        if (column.header) cell.scope = "row";
        cell.dataset.field = column.field;
        tr.append(cell);
      }
      this._insert(tr, data);
    }
    this.rows.set(data.id, { data, tr });
    let changed = !current;
    this.columns.forEach((column, index) => {
      const cell = tr.cells[index];
      const text = column.text(data);
      const className = [column.num && "num", column.user && "col-user", column.cls?.(data)]
        .filter(Boolean)
        .join(" ");
      if (cell.textContent !== text) {
        cell.textContent = text;
        changed = true;
      }
      if (cell.className !== className) cell.className = className;
    });
    tr.className = this.rowClass(data);
    if (changed && flash) flashRow(tr);
    this._trim();
    this._toggleEmpty();
    return true;
  }

  /** Remove a deleted object's row, unless the row is already newer than the deletion. */
  remove(data) {
    const current = this.rows.get(data.id);
    if (current && !isNewer(data, current.data)) return;
    if (data.version !== undefined) this.removed.set(data.id, data.version);
    this._drop(data.id);
  }

  /** Keep only the rows of `ids` (the objects of a snapshot or a reload: the others are gone). */
  retain(ids) {
    for (const id of [...this.rows.keys()]) if (!ids.has(id)) this._drop(id);
  }

  clear() {
    this.rows.clear();
    this.removed.clear();
    this.body.replaceChildren();
    this._toggleEmpty();
  }

  _drop(id) {
    const row = this.rows.get(id);
    if (!row) return;
    row.tr.remove();
    this.rows.delete(id);
    this._toggleEmpty();
  }

  values() {
    return [...this.rows.values()].map((row) => row.data);
  }

  _insert(tr, data) {
    for (const row of this.body.rows) {
      const other = this.rows.get(Number(row.dataset.id));
      if (other && this.compare(data, other.data) < 0) {
        this.body.insertBefore(tr, row);
        return;
      }
    }
    this.body.append(tr);
  }

  _trim() {
    while (this.body.rows.length > this.limit) {
      const last = this.body.rows[this.body.rows.length - 1];
      this.rows.delete(Number(last.dataset.id));
      last.remove();
    }
  }

  _toggleEmpty() {
    this.table.parentElement.dataset.empty = String(this.rows.size === 0);
  }
}

/**
 * Whether `data` is a later state of the object than `current`: by `version` (one per committed
 * change), or by `updatedAt` from a server without versions.
 */
function isNewer(data, current) {
  if (Number.isInteger(data.version) && Number.isInteger(current.version)) {
    return data.version > current.version;
  }
  return !(data.updatedAt && current.updatedAt && current.updatedAt > data.updatedAt);
}

function flashRow(tr) {
  tr.classList.remove("flash");
  void tr.offsetWidth; // restart the animation
  tr.classList.add("flash");
}

const userText = (id) => (id === null || id === undefined ? "—" : `#${id}`);
const statusBadge = (status) => `badge badge-${String(status).toLowerCase().replace(/_/g, "-")}`;
const pnl = (field) => ({ field, num: true, text: (r) => formatMoney(r[field], { signed: true }), cls: (r) => signClass(r[field]) });

const tables = {
  positions: new LiveTable($("positions"), {
    columns: [
      { field: "userId", user: true, text: (r) => userText(r.userId) },
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
      { field: "userId", user: true, text: (r) => userText(r.userId) },
      { field: "createdAt", text: (r) => formatTime(r.createdAt), cls: () => "muted" },
      { field: "symbol", header: true, text: (r) => r.symbol, cls: () => "symbol" },
      { field: "side", text: (r) => r.side, cls: (r) => (r.side === "BUY" ? "side-buy" : "side-sell") },
      { field: "orderType", text: (r) => r.orderType.replace("_", " "), cls: () => "muted" },
      { field: "quantity", num: true, text: (r) => formatQuantity(r.quantity) },
      { field: "price", num: true, text: (r) => (r.price === null ? "market" : formatPrice(r.price)) },
      { field: "filledQuantity", num: true, text: (r) => formatQuantity(r.filledQuantity) },
      { field: "averageFillPrice", num: true, text: (r) => formatPrice(r.averageFillPrice) },
      { field: "status", text: (r) => r.status.replace("_", " "), cls: (r) => statusBadge(r.status) },
    ],
    compare: (a, b) => b.id - a.id,
    limit: MAX_ORDER_ROWS,
  }),
  strategies: new LiveTable($("strategies"), {
    columns: [
      { field: "name", header: true, text: (r) => r.name, cls: () => "strong" },
      { field: "ownerId", user: true, text: (r) => userText(r.ownerId) },
      { field: "status", text: (r) => r.status, cls: (r) => statusBadge(r.status) },
      { field: "orderCount", num: true, text: (r) => String(r.metrics?.orderCount ?? "—") },
      { field: "filledOrderCount", num: true, text: (r) => String(r.metrics?.filledOrderCount ?? "—") },
      { field: "winRate", num: true, text: (r) => formatPercent(r.metrics?.winRate) },
      { ...pnl("realizedPnl"), text: (r) => formatMoney(r.metrics?.realizedPnl, { signed: true }), cls: (r) => signClass(r.metrics?.realizedPnl) },
      { ...pnl("unrealizedPnl"), text: (r) => formatMoney(r.metrics?.unrealizedPnl, { signed: true }), cls: (r) => signClass(r.metrics?.unrealizedPnl) },
      { ...pnl("totalPnl"), text: (r) => formatMoney(r.metrics?.totalPnl, { signed: true }), cls: (r) => `strong ${signClass(r.metrics?.totalPnl)}` },
    ],
    compare: (a, b) => a.name.localeCompare(b.name) || a.id - b.id,
  }),
};

// --- market ticker --------------------------------------------------------------------------

const ticker = {
  items: new Map(), // symbol -> {li, last}

  ensure(symbol) {
    if (this.items.has(symbol)) return this.items.get(symbol);
    const li = document.createElement("li");
    li.className = "tick";
    li.dataset.symbol = symbol;
    li.innerHTML =
      '<span class="tick-symbol"></span><span class="tick-last num">—</span>' +
      '<span class="tick-change num"></span><span class="tick-quote num muted">no ticks yet</span>';
    li.querySelector(".tick-symbol").textContent = symbol;
    li.setAttribute("aria-label", symbol);
    const list = $("ticker");
    const after = [...list.children].find((other) => other.dataset.symbol > symbol);
    list.insertBefore(li, after || null);
    const item = { li, last: null };
    this.items.set(symbol, item);
    $("ticker-empty").hidden = true;
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

  tick({ symbol, last, bid, ask }, { flash = true } = {}) {
    const item = this.ensure(symbol);
    const change = item.last === null ? 0 : Number(last) - Number(item.last);
    item.last = last;
    item.li.querySelector(".tick-last").textContent = formatPrice(last);
    const arrow = item.li.querySelector(".tick-change");
    arrow.textContent = change > 0 ? "▲" : change < 0 ? "▼" : "";
    item.li.dataset.direction = change > 0 ? "up" : change < 0 ? "down" : "flat";
    item.li.querySelector(".tick-quote").textContent =
      bid || ask ? `${formatPrice(bid)} / ${formatPrice(ask)}` : "";
    if (flash) flashRow(item.li);
  },

  clear() {
    this.items.clear();
    $("ticker").replaceChildren();
    $("ticker-empty").hidden = false;
  },
};

// --- the connection -------------------------------------------------------------------------

const session = new Session({ onExpired: (message) => signOut(message) });
const client = new RealtimeClient({
  getToken: ({ reason }) => session.accessToken({ forceRefresh: reason === "refresh" }),
});
let scopeAll = false; // staff (or a permission holder) sees everyone's rows
let statusTimer = null;
let lastConnectionId = null;
let connections = 0; // authenticated connections since sign-in: all but the first resume
let recovery = null; // what the latest resume or repair did, shown beside the state
const snapshotIds = new Map(); // topic -> ids of the snapshot being received

client.onState((state, detail) => {
  const box = $("connection");
  box.dataset.state = state;
  document.body.dataset.connection = state; // the tables dim while they may be stale
  const label = box.querySelector(".connection-label");
  const why = CLOSE_REASONS[detail.code] || (detail.code ? `code ${detail.code}` : "");
  label.textContent = {
    [State.CONNECTING]: "Connecting…",
    [State.CONNECTED]: "Live",
    [State.RECONNECTING]: `Reconnecting${why ? ` (${why})` : ""}…`,
    [State.OFFLINE]: `Offline${why && detail.code !== CloseCode.NORMAL ? `: ${why}` : ""}`,
  }[state];
  $("reconnect").hidden = !(state === State.OFFLINE && session.signedIn);
  if (state === State.RECONNECTING) {
    log(`Reconnect attempt ${detail.attempt} in ${(detail.delayMs / 1000).toFixed(1)} s`, "warn");
  }
  if (state === State.CONNECTED) connections += 1;
  if (state === State.OFFLINE && detail.code === CloseCode.USER_DEACTIVATED) {
    signOut("This account was deactivated.");
  }
});

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
  element.querySelector(".recovery-text").textContent = text;
  const time = element.querySelector("time");
  time.dateTime = recovery.at.toISOString();
  time.textContent = formatTime(recovery.at.toISOString());
}

const verbGroup = (verb) => (verb === "Repaired" ? "repair" : "resume");
const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;

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
    const ack = await client.subscribe(KINDS);
    scopeAll = ack.topics.length === KINDS.length;
    if (!scopeAll && ack.topics.length) await client.unsubscribe(ack.topics);
  }
  if (!scopeAll) {
    await client.subscribe(KINDS.map((kind) => `user:${userId}:${kind}`));
  }
  document.body.classList.toggle("scope-all", scopeAll);
  showTopics();
  log(`Subscribed to ${client.topics.length} topics`, "ok");
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
  const chips = [...list].sort().map((topic) => {
    const chip = document.createElement("span");
    chip.className = "topic";
    chip.textContent = topic;
    return chip;
  });
  $("session-topics").replaceChildren(...chips);
  if (!chips.length) $("session-topics").textContent = "—";
}

function updateSummary() {
  const positions = tables.positions.values();
  const setMoney = (id, value) => {
    $(id).textContent = formatMoney(value, { signed: true });
    $(id).className = `stat-value num ${signClass(value)}`;
  };
  setMoney("sum-total", sum(positions.map((p) => p.totalPnl)));
  setMoney("sum-unrealized", sum(positions.map((p) => p.unrealizedPnl)));
  setMoney("sum-realized", sum(positions.map((p) => p.realizedPnl)));
  $("sum-exposure").textContent = formatMoney(sum(positions.map((p) => p.exposure)));
  const open = tables.orders.values().filter((o) => o.status === "NEW" || o.status === "PARTIALLY_FILLED");
  $("sum-open").textContent = String(open.length);
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

async function start() {
  $("login-view").hidden = true;
  $("dashboard-view").hidden = false;
  $("account").hidden = false;
  $("connection").hidden = false;
  connections = 0;
  recovery = null;
  $("recovery").hidden = true;
  try {
    const [me, canViewStatus] = await Promise.all([client.connect(), pollStatus()]);
    await subscribeAll(me.userId, canViewStatus === true);
    if (canViewStatus) {
      pollStatus(); // now that this connection's subscriptions count
      startStatusPolling();
    }
  } catch (error) {
    log(`Could not start: ${error.message}`, "error");
  }
}

function signOut(message = "") {
  const topics = client.topics;
  client.close();
  client.unsubscribe(topics); // offline: forgets them, so the next user starts clean
  session.signOut();
  stopStatusPolling();
  snapshotIds.clear();
  for (const table of Object.values(tables)) table.clear();
  ticker.clear();
  $("dashboard-view").hidden = true;
  $("account").hidden = true;
  $("connection").hidden = true;
  $("server-panel").hidden = true;
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
    start();
  } catch (error) {
    $("login-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", () => signOut());
$("reconnect").addEventListener("click", () => client.connect().catch(() => {}));

for (const table of Object.values(tables)) table._toggleEmpty();
if (session.signedIn) start();

// For debugging from the console, and for the browser tests.
globalThis.tradingrtDashboard = { client, session, tables };
