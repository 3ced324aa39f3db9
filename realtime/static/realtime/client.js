/**
 * The tradingrt real-time client: a dependency-free ES module for the `/ws` protocol
 * (docs/PROTOCOL.md). It authenticates with the first message (or `?token=`), reconnects with
 * capped, fully jittered exponential backoff, resubscribes after every reconnect, refreshes the
 * access token in-band before it expires, and correlates requests with the server's replies.
 *
 * @example
 * import { RealtimeClient } from "/static/realtime/client.js";
 *
 * const client = new RealtimeClient({ getToken: async () => myAccessToken() });
 * client.onState((state, detail) => console.log(state, detail));
 * client.on("ORDER_UPDATE", (message) => render(message.payload));
 * const session = await client.connect();
 * const ack = await client.subscribe([`user:${session.userId}:orders`, "market:AAPL"]);
 * console.log(ack.topics, ack.rejected);
 *
 * @module realtime/client
 */

/** Close codes the server uses (CONTRACT section 7). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  ABNORMAL: 1006, // no close frame: the network or the server went away
  OPERATOR_DISCONNECT: 4000,
  UNAUTHENTICATED: 4401,
  USER_DEACTIVATED: 4403,
  RATE_LIMITED: 4429,
  SLOW_CONSUMER: 4508,
});

/** After these the client stays offline until `connect()` is called again. */
export const FATAL_CLOSE_CODES = Object.freeze([
  CloseCode.UNAUTHENTICATED,
  CloseCode.USER_DEACTIVATED,
]);

/**
 * Connection states reported to `onState` listeners.
 * @enum {string}
 */
export const State = Object.freeze({
  /** The first connection is being opened and authenticated. */
  CONNECTING: "connecting",
  /** Authenticated; subscriptions are live. */
  CONNECTED: "connected",
  /** The connection dropped; waiting for the next attempt, or attempting. */
  RECONNECTING: "reconnecting",
  /** Not connected and not trying: never started, closed, or stopped by 4401/4403. */
  OFFLINE: "offline",
});

/**
 * @typedef {object} ClientOptions
 * @property {(context: {reason: "connect"|"refresh", expiresAt?: string}) => (string|Promise<string>)} [getToken]
 *   Returns an access token. Called before every connection attempt (`reason: "connect"`) and
 *   before the current token expires (`reason: "refresh"`: return a newer token then).
 * @property {string} [token] A fixed access token, when no `getToken` is given.
 * @property {string} [url] The endpoint, absolute or relative to the page; default `/ws` on
 *   the page's host (`wss:` on https pages).
 * @property {boolean} [tokenInUrl=false] Send the token as `?token=` instead of in the first
 *   message. The first-message flow keeps tokens out of URLs and server logs.
 * @property {number} [backoffBaseMs=500] Ceiling of the first reconnect delay.
 * @property {number} [backoffFactor=2] Growth of the ceiling per failed attempt.
 * @property {number} [backoffCapMs=30000] Largest ceiling; each delay is random below it.
 * @property {number} [refreshLeadMs=30000] Refresh this long before the token expires...
 * @property {number} [refreshFraction=0.8] ...or at this fraction of a short lifetime.
 * @property {number} [requestTimeoutMs=10000] A request without a reply by then is rejected.
 * @property {number} [heartbeatIntervalMs=25000] Idle checks of the connection (0: none); a
 *   HEARTBEAT unanswered within `requestTimeoutMs` drops the connection and reconnects.
 * @property {typeof WebSocket} [WebSocket] The WebSocket class (for tests).
 * @property {() => number} [random] Source of jitter in [0, 1) (for tests).
 */

const DEFAULTS = Object.freeze({
  url: "/ws",
  tokenInUrl: false,
  backoffBaseMs: 500,
  backoffFactor: 2,
  backoffCapMs: 30_000,
  refreshLeadMs: 30_000,
  refreshFraction: 0.8,
  requestTimeoutMs: 10_000,
  heartbeatIntervalMs: 25_000,
  random: Math.random,
});

/**
 * The delay before reconnect attempt `attempt` (0 for the first): "full jitter", uniformly
 * random below min(cap, base * factor^attempt), so clients dropped together spread out.
 * @param {number} attempt
 * @param {{backoffBaseMs: number, backoffFactor: number, backoffCapMs: number}} options
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, options, random = Math.random) {
  const ceiling = Math.min(
    options.backoffCapMs,
    options.backoffBaseMs * options.backoffFactor ** attempt,
  );
  return Math.floor(random() * ceiling);
}

/**
 * When to refresh a token with `lifetimeMs` left: `refreshLeadMs` before expiry, or at
 * `refreshFraction` of the lifetime when that is later (short-lived tokens).
 * @param {number} lifetimeMs
 * @param {{refreshLeadMs: number, refreshFraction: number}} options
 * @returns {number} milliseconds from now, never negative
 */
export function refreshDelay(lifetimeMs, options) {
  return Math.max(
    0,
    lifetimeMs - options.refreshLeadMs,
    lifetimeMs * options.refreshFraction,
  );
}

/**
 * The canonical name of a topic, as the server acknowledges it: symbols are upper-case.
 * @param {string} topic
 * @returns {string}
 */
export function canonicalTopic(topic) {
  return topic.startsWith("market:") ? `market:${topic.slice(7).toUpperCase()}` : topic;
}

/** An error the client reports: a server ERROR, a timeout, a closed connection... */
export class RealtimeError extends Error {
  /**
   * @param {string} code `timeout`, `closed`, `not_connected`, `token`, `refresh`, or the
   *   server's error code (`unauthenticated`, `rate_limited`, ...).
   * @param {string} message
   * @param {{closeCode?: number, reply?: object}} [detail]
   */
  constructor(code, message, detail = {}) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.closeCode = detail.closeCode;
    this.reply = detail.reply;
  }
}

/**
 * One logical connection to `/ws` that survives drops of the physical one.
 *
 * Listener methods (`on`, `onTopic`, `onState`, `onClose`, `onError`) return a function that
 * removes the listener.
 */
export class RealtimeClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.getToken) {
      const token = this.options.token;
      this.options.getToken = () => token;
    }
    this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
    this._state = State.OFFLINE;
    this._session = null;
    this._ws = null;
    this._authenticatedWs = null; // the socket whose AUTHENTICATION replies are renewals
    this._generation = 0; // bumped to abandon an attempt still awaiting its token
    this._stopped = true;
    this._stopInfo = null;
    this._attempt = 0;
    this._nextId = 0;
    this._skewMs = 0; // server clock minus ours, from the AUTHENTICATION timestamp
    this._desired = new Set();
    this._pending = new Map(); // request id -> {resolve, reject, timer}
    this._waiters = []; // subscribe() calls waiting for the next (re)subscription
    this._ready = []; // connect() calls waiting for authentication
    this._timers = { reconnect: null, refresh: null, heartbeat: null };
    this._listeners = new Map(); // "type:X", "topic:X", "state", "close", "error" -> Set
    if (typeof globalThis.addEventListener === "function") {
      // Back online: try now rather than at the end of a long backoff.
      globalThis.addEventListener("online", () => {
        if (this._state === State.RECONNECTING) this.connect();
      });
    }
  }

  /** @returns {string} one of {@link State} */
  get state() {
    return this._state;
  }

  /**
   * The authenticated session: `{userId, username, connectionId, expiresAt}`, or null.
   * @returns {?{userId: number, username: string, connectionId: string, expiresAt: string}}
   */
  get session() {
    return this._session;
  }

  /** @returns {string[]} the topics this client holds, and resubscribes after reconnecting */
  get topics() {
    return [...this._desired].sort();
  }

  // --- lifecycle ------------------------------------------------------------------------

  /**
   * Start connecting (or, while waiting to reconnect, try at once). Also the way to resume
   * after `close()` or a 4401/4403 stop.
   * @returns {Promise<object>} the session, once authenticated; rejected if the client goes
   *   offline first
   */
  connect() {
    const ready = this._whenReady();
    if (this._state === State.CONNECTED) return ready;
    this._stopped = false;
    this._stopInfo = null;
    if (this._timers.reconnect !== null) {
      clearTimeout(this._timers.reconnect);
      this._timers.reconnect = null;
      this._open();
    } else if (this._ws === null && this._state === State.OFFLINE) {
      this._attempt = 0;
      this._setState(State.CONNECTING);
      this._open();
    }
    return ready;
  }

  /**
   * Close the connection and stop reconnecting. Pending requests are rejected; the topics are
   * kept and resubscribed by a later `connect()`.
   * @param {number} [code=1000] the code reported to `onClose` and `onState` listeners (the
   *   socket itself is closed with 1000)
   * @param {string} [reason]
   */
  close(code = CloseCode.NORMAL, reason = "closed by the client") {
    this._stop({ code, reason });
  }

  // --- requests -------------------------------------------------------------------------

  /**
   * Subscribe to topics. Resolves with the server's acknowledgement `{action, topics,
   * rejected}` (each rejected entry `{topic, reason}`); rejected topics are dropped, accepted
   * ones are resubscribed after every reconnect. While not connected the topics are remembered
   * and the promise resolves with the acknowledgement of the next connection's subscription.
   * @param {string|string[]} topics
   * @returns {Promise<{action: string, topics: string[], rejected: {topic: string, reason: string}[]}>}
   */
  subscribe(topics) {
    const names = toTopicList(topics);
    for (const name of names) this._desired.add(name);
    if (this._state !== State.CONNECTED) {
      return new Promise((resolve, reject) => this._waiters.push({ names, resolve, reject }));
    }
    return this._request("SUBSCRIPTION", { action: "subscribe", topics: names }).then(
      (reply) => this._acknowledged(reply.payload),
    );
  }

  /**
   * Unsubscribe from topics; resolves with the server's acknowledgement (or, while not
   * connected, at once: nothing is held then).
   * @param {string|string[]} topics
   * @returns {Promise<{action: string, topics: string[], rejected: object[]}>}
   */
  unsubscribe(topics) {
    const names = toTopicList(topics);
    for (const name of names) this._desired.delete(name);
    if (this._state !== State.CONNECTED) {
      return Promise.resolve({ action: "unsubscribed", topics: names, rejected: [] });
    }
    return this._request("SUBSCRIPTION", { action: "unsubscribe", topics: names }).then(
      (reply) => reply.payload,
    );
  }

  /**
   * Send any client message and wait for its reply, correlated by `id` (for example
   * `request("SUBSCRIPTION", {action: "list"})` or `request("HEARTBEAT")`).
   * @param {string} type
   * @param {object} [payload]
   * @returns {Promise<object>} the whole reply message; an ERROR reply rejects with a
   *   RealtimeError carrying the server's code
   */
  request(type, payload = {}) {
    if (this._state !== State.CONNECTED) {
      return Promise.reject(new RealtimeError("not_connected", `Not connected (${this._state}).`));
    }
    return this._request(type, payload);
  }

  // --- listeners ------------------------------------------------------------------------

  /**
   * Listen to server messages of one type (`ORDER_UPDATE`, `ERROR`, ...), or `"*"` for all.
   * @param {string} type
   * @param {(message: object) => void} listener called with the whole message
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    return this._listen(`type:${type}`, listener);
  }

  /**
   * Listen to the updates delivered for one topic.
   * @param {string} topic
   * @param {(message: object) => void} listener
   * @returns {() => void}
   */
  onTopic(topic, listener) {
    return this._listen(`topic:${canonicalTopic(topic)}`, listener);
  }

  /**
   * Listen to state changes; `detail` tells why: `{code, reason}` of the close that caused
   * `reconnecting` or `offline`, and `{attempt, delayMs}` of the next reconnect attempt.
   * `connected` is reported once the resubscription has been sent; the server answers in
   * order, so a request made from the listener is answered after the resubscription.
   * @param {(state: string, detail: object) => void} listener
   * @returns {() => void}
   */
  onState(listener) {
    return this._listen("state", listener);
  }

  /**
   * Listen to closes of the underlying connection.
   * @param {(event: {code: number, reason: string, wasClean: boolean, willReconnect: boolean}) => void} listener
   * @returns {() => void}
   */
  onClose(listener) {
    return this._listen("close", listener);
  }

  /**
   * Listen to errors not tied to a request: uncorrelated server ERRORs (`rate_limited`, the
   * token's expiry), a failed token refresh, an unparseable message.
   * @param {(error: RealtimeError) => void} listener
   * @returns {() => void}
   */
  onError(listener) {
    return this._listen("error", listener);
  }

  // --- internals: the connection --------------------------------------------------------

  async _open() {
    const generation = ++this._generation;
    let token;
    try {
      token = await this.options.getToken({ reason: "connect" });
    } catch (error) {
      if (generation !== this._generation || this._stopped) return;
      this._emitError(new RealtimeError("token", `getToken failed: ${describe(error)}`));
      this._scheduleReconnect({ code: 0, reason: "no token" });
      return;
    }
    if (generation !== this._generation || this._stopped) return;
    let url = resolveUrl(this.options.url);
    if (this.options.tokenInUrl) {
      url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    }
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (error) {
      this._emitError(new RealtimeError("closed", `Cannot open ${url}: ${describe(error)}`));
      this._scheduleReconnect({ code: 0, reason: "cannot open" });
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => this._receive(ws, event.data);
    ws.onclose = (event) => this._closed(ws, event.code, event.reason, event.wasClean);
    ws.onerror = () => {}; // the close event that follows says what happened
    ws.onopen = () => {
      if (this.options.tokenInUrl) return; // the server's first message authenticates us
      this._request("AUTHENTICATION", { token }).catch((error) => {
        if (ws !== this._ws || error.code === "closed") return;
        if (error.code === "timeout") {
          this._abandon(ws, "authentication timeout");
        } else {
          // A refused token will not become valid by retrying it: stop, as a 4401 would.
          this._stop({ code: CloseCode.UNAUTHENTICATED, reason: error.message });
        }
      });
    };
  }

  _receive(ws, text) {
    if (ws !== this._ws) return;
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this._emitError(new RealtimeError("invalid_json", "The server sent invalid JSON."));
      return;
    }
    if (message === null || typeof message !== "object") return;
    const payload = message.payload || {};
    const pending = message.id !== undefined ? this._pending.get(message.id) : undefined;
    if (pending) {
      this._pending.delete(message.id);
      clearTimeout(pending.timer);
      if (message.type === "ERROR") {
        pending.reject(new RealtimeError(payload.code, payload.message, { reply: message }));
      } else {
        pending.resolve(message);
      }
    } else if (message.type === "ERROR") {
      this._emitError(new RealtimeError(payload.code, payload.message, { reply: message }));
    }
    if (message.type === "AUTHENTICATION" && payload.status === "authenticated") {
      this._authenticated(ws, message);
    }
    this._emit(`type:${message.type}`, message);
    this._emit("type:*", message);
    if (typeof message.topic === "string") this._emit(`topic:${message.topic}`, message);
  }

  _authenticated(ws, message) {
    const payload = message.payload;
    const previous = this._session;
    const renewal = this._authenticatedWs === ws;
    const serverNow = Date.parse(message.timestamp);
    if (Number.isFinite(serverNow)) this._skewMs = serverNow - Date.now();
    this._session = {
      userId: payload.userId,
      username: payload.username,
      connectionId: payload.connectionId,
      expiresAt: payload.expiresAt,
    };
    if (renewal && previous && !(Date.parse(payload.expiresAt) > Date.parse(previous.expiresAt))) {
      this._emitError(
        new RealtimeError("refresh", "getToken returned a token that expires no later."),
      );
      this._retryRefresh(Date.parse(payload.expiresAt));
      return;
    }
    this._scheduleRefresh();
    if (renewal) return;
    this._authenticatedWs = ws;
    this._attempt = 0;
    this._startHeartbeat();
    this._resubscribe(); // first, so requests made by state listeners are answered after it
    this._setState(State.CONNECTED, { session: this._session });
    for (const waiter of this._ready.splice(0)) waiter.resolve(this._session);
  }

  _resubscribe() {
    const waiters = this._waiters.splice(0);
    const names = [...this._desired];
    if (names.length === 0) {
      for (const waiter of waiters) waiter.resolve(ackFor(waiter.names, []));
      return;
    }
    this._request("SUBSCRIPTION", { action: "subscribe", topics: names }).then(
      (reply) => {
        const ack = this._acknowledged(reply.payload);
        for (const waiter of waiters) waiter.resolve(ackFor(waiter.names, ack.rejected, ack));
      },
      (error) => {
        if (this._stopped) {
          for (const waiter of waiters) waiter.reject(error);
        } else {
          this._waiters.unshift(...waiters); // answered by the next connection's resubscription
          if (error.code !== "closed") this._emitError(error);
        }
      },
    );
  }

  _acknowledged(payload) {
    for (const { topic } of payload.rejected || []) this._desired.delete(topic);
    return { action: payload.action, topics: payload.topics || [], rejected: payload.rejected || [] };
  }

  _closed(ws, code, reason, wasClean) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this._clearTimer("refresh");
    this._clearTimer("heartbeat");
    const info = this._stopInfo || { code, reason };
    const closed = new RealtimeError("closed", `The connection closed (${info.code}).`, {
      closeCode: info.code,
    });
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(closed);
    }
    this._pending.clear();
    const willReconnect = !this._stopped && !FATAL_CLOSE_CODES.includes(info.code);
    this._emit("close", { code: info.code, reason: info.reason, wasClean, willReconnect });
    if (willReconnect) {
      this._scheduleReconnect(info);
    } else {
      this._goOffline(info, closed);
    }
  }

  _scheduleReconnect(info) {
    const delayMs = backoffDelay(this._attempt, this.options, this.options.random);
    this._attempt += 1;
    this._setState(State.RECONNECTING, {
      code: info.code,
      reason: info.reason,
      attempt: this._attempt,
      delayMs,
    });
    this._clearTimer("reconnect");
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delayMs);
  }

  _stop(info) {
    this._stopped = true;
    this._stopInfo = info;
    this._generation += 1;
    this._clearTimer("reconnect");
    const ws = this._ws;
    if (ws !== null) {
      try {
        ws.close(CloseCode.NORMAL);
      } catch {
        // already closing
      }
      this._closed(ws, info.code, info.reason, true); // at once: do not wait for the echo
    } else {
      this._goOffline(info, new RealtimeError("closed", info.reason, { closeCode: info.code }));
    }
  }

  _goOffline(info, error) {
    this._stopped = true;
    this._session = null;
    this._clearTimer("reconnect");
    for (const waiter of this._waiters.splice(0)) waiter.reject(error);
    for (const waiter of this._ready.splice(0)) waiter.reject(error);
    if (this._state !== State.OFFLINE) {
      this._setState(State.OFFLINE, { code: info.code, reason: info.reason });
    }
  }

  _whenReady() {
    if (this._state === State.CONNECTED) return Promise.resolve(this._session);
    return new Promise((resolve, reject) => this._ready.push({ resolve, reject }));
  }

  // --- internals: token refresh and heartbeat -------------------------------------------

  _scheduleRefresh() {
    this._clearTimer("refresh");
    const expiresAtMs = Date.parse(this._session.expiresAt);
    if (!Number.isFinite(expiresAtMs)) return;
    const lifetimeMs = expiresAtMs - (Date.now() + this._skewMs);
    this._timers.refresh = setTimeout(
      () => this._refresh(expiresAtMs),
      refreshDelay(lifetimeMs, this.options),
    );
  }

  async _refresh(expiresAtMs) {
    this._timers.refresh = null;
    const ws = this._ws;
    try {
      const token = await this.options.getToken({
        reason: "refresh",
        expiresAt: this._session && this._session.expiresAt,
      });
      if (ws !== this._ws || this._state !== State.CONNECTED) return;
      await this._request("AUTHENTICATION", { token }); // the reply reschedules (_authenticated)
    } catch (error) {
      if (ws !== this._ws || error.code === "closed") return;
      this._emitError(new RealtimeError("refresh", `Token refresh failed: ${describe(error)}`));
      this._retryRefresh(expiresAtMs);
    }
  }

  _retryRefresh(expiresAtMs) {
    // Try again halfway to expiry while there is time; past it the server closes with 4401.
    const remainingMs = expiresAtMs - (Date.now() + this._skewMs);
    if (remainingMs > 1000) {
      this._clearTimer("refresh");
      this._timers.refresh = setTimeout(
        () => this._refresh(expiresAtMs),
        Math.max(1000, remainingMs / 2),
      );
    }
  }

  _startHeartbeat() {
    const interval = this.options.heartbeatIntervalMs;
    if (!interval) return;
    const ws = this._ws;
    this._clearTimer("heartbeat");
    this._timers.heartbeat = setTimeout(() => {
      this._request("HEARTBEAT", {}).then(
        () => ws === this._ws && this._startHeartbeat(),
        (error) => {
          // No answer: the connection is dead even if the browser has not noticed yet.
          if (ws === this._ws && error.code === "timeout") this._abandon(ws, "heartbeat timeout");
        },
      );
    }, interval);
  }

  _abandon(ws, reason) {
    ws.onclose = null;
    try {
      ws.close();
    } catch {
      // already closing
    }
    this._closed(ws, CloseCode.ABNORMAL, reason, false);
  }

  // --- internals: plumbing --------------------------------------------------------------

  _request(type, payload) {
    const ws = this._ws;
    if (ws === null || ws.readyState !== 1) {
      return Promise.reject(new RealtimeError("closed", "The connection is not open."));
    }
    const id = ++this._nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RealtimeError("timeout", `No reply to ${type} within ${this.options.requestTimeoutMs} ms.`));
      }, this.options.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ type, id, timestamp: new Date().toISOString(), payload }));
      } catch (error) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new RealtimeError("closed", `Send failed: ${describe(error)}`));
      }
    });
  }

  _setState(state, detail = {}) {
    this._state = state;
    this._emit("state", state, detail);
  }

  _clearTimer(name) {
    if (this._timers[name] !== null) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _listen(key, listener) {
    if (!this._listeners.has(key)) this._listeners.set(key, new Set());
    const listeners = this._listeners.get(key);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  _emit(key, ...args) {
    const listeners = this._listeners.get(key);
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(...args);
      } catch (error) {
        // A failing listener must not break the client or the other listeners.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  _emitError(error) {
    this._emit("error", error);
  }
}

function toTopicList(topics) {
  const list = typeof topics === "string" ? [topics] : [...topics];
  return [...new Set(list.map(canonicalTopic))];
}

function ackFor(names, rejected, ack = { topics: [] }) {
  const mine = new Set(names);
  return {
    action: "subscribed",
    topics: ack.topics.filter((topic) => mine.has(topic)),
    rejected: rejected.filter((entry) => mine.has(entry.topic)),
  };
}

function resolveUrl(url) {
  if (/^wss?:\/\//.test(url)) return url;
  const base = globalThis.location;
  const absolute = new URL(url, base ? base.href : undefined);
  absolute.protocol = absolute.protocol === "https:" ? "wss:" : "ws:";
  return absolute.href;
}

function describe(error) {
  return error && error.message ? error.message : String(error);
}
