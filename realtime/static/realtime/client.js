/**
 * The tradingrt real-time client: a dependency-free ES module for the `/ws` protocol
 * (docs/PROTOCOL.md). It authenticates with the first message (or `?token=`), reconnects with
 * capped, fully jittered exponential backoff, refreshes the access token in-band before it
 * expires, and correlates requests with the server's replies.
 *
 * Delivery (docs/PROTOCOL.md section 7): it keeps each topic's position (the epoch and seq of
 * the last message it applied), ignores repeats, and notices gaps (a seq jump, or a server
 * HEARTBEAT position ahead of its own); it repairs them, and resumes after every reconnect, by
 * subscribing again with `since`. A topic's first subscription asks for a snapshot of its state,
 * and so does every resume, so a history the server no longer holds comes back as a `reset`
 * followed by the state in the same request.
 *
 * @example
 * import { RealtimeClient } from "/static/realtime/client.js";
 *
 * const client = new RealtimeClient({ getToken: async () => myAccessToken() });
 * client.onState((state, detail) => console.log(state, detail));
 * client.onSnapshot(({ topic, items, first, last }) => replaceState(topic, items, first, last));
 * client.onReset(({ topic, reason, snapshot }) => snapshot || reloadOverRest(topic));
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
  STREAM_INTERRUPTED: 4503, // the server's update stream broke: reconnect and resume
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
 * Why a topic's history was not resumed (the `reason` of a `reset` event): the server's reasons
 * (`expired`, `epoch`, `unavailable`, or another it may add) and the client's own.
 */
export const ResetReason = Object.freeze({
  /** Older than the server's history. */
  EXPIRED: "expired",
  /** The topic's history was reset (another epoch). */
  EPOCH: "epoch",
  /** The server could not reach its history store. */
  UNAVAILABLE: "unavailable",
  /** A snapshot was asked for, and none came within `requestTimeoutMs` (the client's own). */
  NO_SNAPSHOT: "no_snapshot",
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
 * @property {boolean} [snapshot=true] Ask for a snapshot of each topic's state on its first
 *   subscription and whenever its history cannot be resumed (`subscribe()` can say otherwise
 *   per topic).
 * @property {?Storage} [positionStorage=null] Keep topic positions across a page reload in this
 *   storage (`sessionStorage`), per user and topic, so the page resumes where it left off.
 *   Only right if the page restores its own state to the same moment: see savePositions().
 * @property {number} [backoffBaseMs=500] Ceiling of the first reconnect delay.
 * @property {number} [backoffFactor=2] Growth of the ceiling per failed attempt.
 * @property {number} [backoffCapMs=30000] Largest ceiling; each delay is random below it.
 * @property {number} [refreshLeadMs=30000] Refresh this long before the token expires...
 * @property {number} [refreshFraction=0.8] ...or at this fraction of a short lifetime.
 * @property {number} [requestTimeoutMs=10000] A request without a reply by then is rejected;
 *   a snapshot whose next page takes longer is given up (`reset` with `no_snapshot`).
 * @property {number} [heartbeatIntervalMs=25000] Idle checks of the connection (0: none); a
 *   HEARTBEAT unanswered within `requestTimeoutMs` drops the connection and reconnects.
 * @property {typeof WebSocket} [WebSocket] The WebSocket class (for tests).
 * @property {() => number} [random] Source of jitter in [0, 1) (for tests).
 */

const DEFAULTS = Object.freeze({
  url: "/ws",
  tokenInUrl: false,
  snapshot: true,
  positionStorage: null,
  backoffBaseMs: 500,
  backoffFactor: 2,
  backoffCapMs: 30_000,
  refreshLeadMs: 30_000,
  refreshFraction: 0.8,
  requestTimeoutMs: 10_000,
  heartbeatIntervalMs: 25_000,
  random: Math.random,
});

const POSITIONS_KEY = "tradingrt.realtime.positions"; // + ":" + userId, in positionStorage

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
 * What the client knows of one topic it holds.
 * @private
 */
class Subscription {
  constructor(name, snapshot) {
    this.name = name;
    this.snapshot = snapshot; // ask for the state on the first subscription and on a reset
    this.position = null; // {epoch, seq} of the last message applied (or of the snapshot)
    this.fence = null; // {id, since, snapshot, cause}: the (re)subscription awaiting its reply
    this.buffer = []; // messages held until the first position is known
    this.loading = null; // {head, epoch, seq, page, reason, timer}: a snapshot being received
    this.recovering = null; // {target, replayed, cause}: a replay under way
    this.restored = false; // the position came from positionStorage (a reloaded page)
  }

  /** Take the position a previous page stored, if any. */
  restore(position) {
    this.position = position;
    this.restored = position !== null;
  }
}

/**
 * One logical connection to `/ws` that survives drops of the physical one.
 *
 * Listener methods (`on`, `onTopic`, `onState`, `onClose`, `onError`, `onSnapshot`,
 * `onRecovered`, `onReset`) return a function that removes the listener.
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
    this._userId = null; // the last authenticated user: whose stored positions apply
    this._ws = null;
    this._authenticatedWs = null; // the socket whose AUTHENTICATION replies are renewals
    this._generation = 0; // bumped to abandon an attempt still awaiting its token
    this._stopped = true;
    this._stopInfo = null;
    this._attempt = 0;
    this._nextId = 0;
    this._skewMs = 0; // server clock minus ours, from the AUTHENTICATION timestamp
    this._subscriptions = new Map(); // canonical topic -> Subscription
    this._pending = new Map(); // request id -> {resolve, reject, timer, handle?}
    this._waiters = []; // subscribe() calls waiting for the next (re)subscription
    this._ready = []; // connect() calls waiting for authentication
    this._timers = { reconnect: null, refresh: null, heartbeat: null };
    this._listeners = new Map(); // "type:X", "topic:X", "state", "close", ... -> Set
    this._stats = { duplicates: 0, gaps: 0, repairs: 0, recovered: 0, resets: 0, snapshots: 0 };
    this._global = [];
    // Back online: try now rather than at the end of a long backoff.
    this._addGlobalListener("online", () => {
      if (this._state === State.RECONNECTING) this.connect().catch(() => {});
    });
    // Leaving the page (a reload, too): keep the positions for the next page of this tab.
    if (this.options.positionStorage) this._addGlobalListener("pagehide", () => this.savePositions());
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
    return [...this._subscriptions.keys()].sort();
  }

  /**
   * Each held topic's position: the epoch and seq of the last message applied (or of the
   * snapshot that set its state). Topics without one yet are left out.
   * @returns {Object<string, {epoch: string, seq: number}>}
   */
  get positions() {
    const positions = {};
    for (const [name, subscription] of this._subscriptions) {
      if (subscription.position && !subscription.loading) {
        positions[name] = { ...subscription.position };
      }
    }
    return positions;
  }

  /**
   * Counters since this client was made: `duplicates` ignored, `gaps` seen, `repairs` asked for
   * (a resubscription with `since` on the same connection), `recovered` and `resets` answered,
   * `snapshots` received in full.
   * @returns {{duplicates: number, gaps: number, repairs: number, recovered: number,
   *   resets: number, snapshots: number}}
   */
  get stats() {
    return { ...this._stats };
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
   * Close the connection and stop reconnecting. Pending requests are rejected; the topics and
   * their positions are kept, and resumed by a later `connect()`.
   * @param {number} [code=1000] the code reported to `onClose` and `onState` listeners (the
   *   socket itself is closed with 1000)
   * @param {string} [reason]
   */
  close(code = CloseCode.NORMAL, reason = "closed by the client") {
    this._stop({ code, reason });
  }

  /** Close, and remove the listeners this client added to the page (`online`, `pagehide`). */
  dispose() {
    this.close();
    for (const [name, listener] of this._global.splice(0)) {
      globalThis.removeEventListener(name, listener);
    }
  }

  // --- requests -------------------------------------------------------------------------

  /**
   * Subscribe to topics. Resolves with the server's acknowledgement of them: `{action, topics,
   * rejected, positions, recovered, reset}` (§4.2; rejected entries `{topic, reason}`).
   * Rejected topics are dropped; accepted ones are resumed after every reconnect. A topic's
   * first subscription asks for a snapshot of its state unless `snapshot` is false (for this
   * call, or as the client's option); its pages reach `onSnapshot` listeners, then its updates
   * follow. A topic already held is left as it is. While not connected (or if the connection
   * drops before the reply) the topics are remembered and the promise resolves with the next
   * connection's acknowledgement. An `ERROR` reply rejects it and forgets the new topics.
   * @param {string|string[]} topics
   * @param {{snapshot?: boolean}} [options]
   * @returns {Promise<{action: string, topics: string[], rejected: {topic: string, reason: string}[],
   *   positions: Object<string, {epoch: string, seq: number}>, recovered: string[],
   *   reset: {topic: string, reason: string}[]}>}
   */
  subscribe(topics, options = {}) {
    const names = toTopicList(topics);
    const snapshot = options.snapshot ?? this.options.snapshot;
    const fresh = [];
    for (const name of names) {
      if (this._subscriptions.has(name)) continue;
      const subscription = new Subscription(name, Boolean(snapshot));
      subscription.restore(this._storedPosition(name));
      this._subscriptions.set(name, subscription);
      fresh.push(subscription);
    }
    if (this._state !== State.CONNECTED) {
      return new Promise((resolve, reject) => this._waiters.push({ names, resolve, reject }));
    }
    const cause = (subscription) => (subscription.restored ? "reload" : "subscribe");
    return this._fence(fresh, names, cause).then(
      (ack) => ackFor(names, ack),
      (error) => {
        if (error.code === "closed") {
          if (this._stopped) throw error; // kept, for a later connect()
          // Asked again by the next connection's resubscription, which answers this call.
          return new Promise((resolve, reject) => this._waiters.push({ names, resolve, reject }));
        }
        // Refused (an ERROR reply): not held, so never silently left out of resubscriptions.
        for (const subscription of fresh) this._forget(subscription);
        throw error;
      },
    );
  }

  /**
   * Unsubscribe from topics: forgets them and their positions (stored ones too); resolves with
   * the server's acknowledgement (§4.3), or at once while not connected.
   * @param {string|string[]} topics
   * @returns {Promise<{action: string, topics: string[], rejected: object[]}>}
   */
  unsubscribe(topics) {
    const names = toTopicList(topics);
    for (const name of names) {
      const subscription = this._subscriptions.get(name);
      if (subscription) this._forget(subscription);
    }
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

  /**
   * Write the positions of the topics held to `positionStorage`, for the next page of this tab
   * (the client also does this on `pagehide`). Call it where you save your own state, in the
   * same synchronous handler, so that both describe the same moment: the next page resumes each
   * topic from there, replaying only what came after. Returns what was written (`{}` without a
   * storage or before the first authentication).
   * @returns {Object<string, {epoch: string, seq: number}>}
   */
  savePositions() {
    const storage = this.options.positionStorage;
    if (!storage || this._userId === null) return {};
    const positions = this.positions;
    try {
      storage.setItem(`${POSITIONS_KEY}:${this._userId}`, JSON.stringify(positions));
    } catch {
      return {}; // full or forbidden storage: the next page starts from snapshots
    }
    return positions;
  }

  // --- listeners ------------------------------------------------------------------------

  /**
   * Listen to server messages of one type (`ORDER_UPDATE`, `ERROR`, ...), or `"*"` for all.
   * Updates of a held topic are passed on once each, in seq order: repeats and messages after
   * a gap are not (the gap is repaired first).
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

  /**
   * Listen to the pages of a topic's snapshot: its whole state at `seq` (on the first
   * subscription, and after a `reset` when snapshots are on). Replace what you hold of the
   * topic with the items of all pages, from the page with `first` to the one with `last`; the
   * topic's updates after `seq` follow the last page. `reason` is the reset's, or null on a
   * first subscription.
   * @param {(event: {topic: string, epoch: string, seq: number, items: object[], page: number,
   *   first: boolean, last: boolean, reason: ?string}) => void} listener
   * @returns {() => void}
   */
  onSnapshot(listener) {
    return this._listen("snapshot", listener);
  }

  /**
   * Listen to resumes that succeeded: the `replayed` updates missed (possibly 0) have been
   * delivered, in order, to the update listeners. `cause`: `reconnect`, `gap` (a seq jump),
   * `heartbeat` (the server's position was ahead), or `reload` (positions from storage).
   * @param {(event: {topic: string, replayed: number, cause: string,
   *   position: {epoch: string, seq: number}}) => void} listener
   * @returns {() => void}
   */
  onRecovered(listener) {
    return this._listen("recovered", listener);
  }

  /**
   * Listen to resumes the server refused (see {@link ResetReason}): what the topic missed is
   * lost to the stream. With `snapshot: true` a snapshot follows (onSnapshot); otherwise reload
   * the topic's state yourself (over REST); its updates from now on follow. `cause` as for
   * onRecovered, or `epoch` (a message or heartbeat of another epoch).
   * @param {(event: {topic: string, reason: string, snapshot: boolean, cause: string}) => void} listener
   * @returns {() => void}
   */
  onReset(listener) {
    return this._listen("reset", listener);
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
        // At once, not in a promise callback: the messages after this reply depend on it.
        if (pending.handle) pending.handle(message);
        pending.resolve(message);
      }
    } else if (message.type === "ERROR") {
      this._emitError(new RealtimeError(payload.code, payload.message, { reply: message }));
    }
    if (message.type === "AUTHENTICATION" && payload.status === "authenticated") {
      this._authenticated(ws, message);
    } else if (message.type === "HEARTBEAT" && payload.positions) {
      this._checkPositions(payload.positions);
    } else if (message.type === "SUBSCRIPTION" && payload.action === "revoked") {
      for (const name of payload.topics || []) {
        const subscription = this._subscriptions.get(name);
        if (subscription) this._forget(subscription);
      }
    }
    const subscription =
      typeof message.topic === "string" && Number.isInteger(message.seq)
        ? this._subscriptions.get(message.topic)
        : undefined;
    if (subscription) {
      this._route(subscription, message);
    } else {
      this._deliver(message);
    }
  }

  _deliver(message) {
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
    if (this._userId !== payload.userId) {
      this._userId = payload.userId;
      // Topics subscribed before anyone signed in resume from this user's stored positions.
      for (const subscription of this._subscriptions.values()) {
        if (subscription.position === null) {
          subscription.restore(this._storedPosition(subscription.name));
        }
      }
    }
    this._startHeartbeat();
    this._resubscribe(); // first, so requests made by state listeners are answered after it
    this._setState(State.CONNECTED, { session: this._session });
    for (const waiter of this._ready.splice(0)) waiter.resolve(this._session);
  }

  /** Subscribe to every held topic on a new connection, resuming each from its position. */
  _resubscribe() {
    const waiters = this._waiters.splice(0);
    const subscriptions = [...this._subscriptions.values()];
    for (const subscription of subscriptions) this._settle(subscription);
    if (subscriptions.length === 0) {
      this._attempt = 0;
      for (const waiter of waiters) waiter.resolve(ackFor(waiter.names, emptyAck()));
      return;
    }
    const names = subscriptions.map((subscription) => subscription.name);
    const ws = this._ws;
    const cause = (subscription) => (subscription.restored ? "reload" : "reconnect");
    this._fence(subscriptions, names, cause).then(
      (ack) => {
        this._attempt = 0; // only now: a server that drops us before this keeps backing off
        for (const waiter of waiters) waiter.resolve(ackFor(waiter.names, ack));
      },
      (error) => {
        if (this._stopped) {
          for (const waiter of waiters) waiter.reject(error);
          return;
        }
        this._waiters.unshift(...waiters); // answered by the next connection's resubscription
        if (error.code !== "closed") {
          // Connected but holding nothing would look live and be silent: start over.
          this._emitError(error);
          if (ws === this._ws) this._abandon(ws, `resubscription failed (${error.code})`);
        }
      },
    );
  }

  /**
   * Send a subscribe for `names`, (re)fencing `subscriptions` among them: each of those asks
   * to resume from its position (`since`) or for a snapshot, and takes its new position from
   * the reply. Resolves with the reply's payload, normalised.
   */
  _fence(subscriptions, names, cause) {
    const id = ++this._nextId;
    const fenced = new Set();
    const entries = names.map((name) => {
      const subscription = this._subscriptions.get(name);
      if (!subscriptions.includes(subscription)) return name; // held already: left as it is
      fenced.add(subscription);
      subscription.fence = {
        id,
        since: subscription.position ? { ...subscription.position } : null,
        snapshot: subscription.snapshot,
        cause: cause(subscription),
      };
      subscription.restored = false;
      return subscriptionEntry(subscription);
    });
    const request = this._request(
      "SUBSCRIPTION",
      { action: "subscribe", topics: entries },
      { id, handle: (reply) => this._fenced(id, reply.payload || {}) },
    );
    return request.then(
      (reply) => normaliseAck(reply.payload || {}),
      (error) => {
        for (const subscription of fenced) {
          if (subscription.fence && subscription.fence.id === id) subscription.fence = null;
        }
        if (error.code === "timeout" && this._ws !== null) {
          // No reply to a subscribe: the connection cannot be trusted; start over.
          this._abandon(this._ws, "subscription timeout");
          throw new RealtimeError("closed", error.message);
        }
        throw error;
      },
    );
  }

  /** A subscribe reply: each topic this request fenced learns its position, or its reset. */
  _fenced(id, payload) {
    const positions = payload.positions || {};
    const recovered = new Set(payload.recovered || []);
    const resets = new Map((payload.reset || []).map((entry) => [entry.topic, entry.reason]));
    for (const name of payload.topics || []) {
      const subscription = this._subscriptions.get(name);
      if (!subscription || !subscription.fence || subscription.fence.id !== id) continue;
      const fence = subscription.fence;
      subscription.fence = null;
      const head = validPosition(positions[name]);
      if (fence.since && recovered.has(name)) {
        this._stats.recovered += 1;
        subscription.recovering = {
          target: head ? head.seq : fence.since.seq,
          replayed: head ? Math.max(0, head.seq - fence.since.seq) : 0,
          cause: fence.cause,
        };
        this._recoveredIfDone(subscription);
      } else if (fence.since) {
        // Refused (or not confirmed): what was missed is lost to the stream.
        this._stats.resets += 1;
        const reason = resets.get(name) || "unavailable";
        this._emit("reset", { topic: name, reason, snapshot: fence.snapshot, cause: fence.cause });
        this._startFrom(subscription, head, fence.snapshot, reason);
      } else {
        this._startFrom(subscription, head, fence.snapshot, null);
      }
    }
    // Rejected, or (never expected) not mentioned at all: not held.
    for (const subscription of [...this._subscriptions.values()]) {
      if (subscription.fence && subscription.fence.id === id) this._forget(subscription);
    }
  }

  /** After a fresh subscription or a reset: wait for the snapshot, or go on from `head`. */
  _startFrom(subscription, head, snapshot, reason) {
    subscription.recovering = null;
    if (snapshot) {
      subscription.loading = { head, epoch: head ? head.epoch : null, seq: null, page: 0, reason };
      this._awaitSnapshotPage(subscription);
      return;
    }
    subscription.position = head;
    this._flush(subscription);
  }

  _awaitSnapshotPage(subscription) {
    const loading = subscription.loading;
    clearTimeout(loading.timer);
    loading.timer = setTimeout(() => {
      if (subscription.loading !== loading) return;
      // No snapshot (or no next page) in time: the page must reload the state itself.
      subscription.loading = null;
      this._stats.resets += 1;
      this._emit("reset", {
        topic: subscription.name,
        reason: ResetReason.NO_SNAPSHOT,
        snapshot: false,
        cause: "snapshot",
      });
      subscription.position = loading.head; // what follows it is live; the page reloads the rest
      this._flush(subscription);
    }, this.options.requestTimeoutMs);
  }

  /** A message of a held topic: applied in seq order once, held, or the start of a repair. */
  _route(subscription, message) {
    if (message.type === "SNAPSHOT") {
      this._snapshotPage(subscription, message);
    } else if (subscription.fence) {
      // Awaiting a (re)subscription's reply. Without a position yet, keep everything for
      // after it; with one, apply only the next message: the others are repeats or come again.
      if (subscription.position === null) {
        subscription.buffer.push(message);
      } else if (this._follows(subscription, message)) {
        this._apply(subscription, message);
      }
    } else if (subscription.loading) {
      // Updates after the snapshot's seq wait for its last page.
      if (subscription.loading.epoch === null || message.epoch === subscription.loading.epoch) {
        subscription.buffer.push(message);
      }
    } else {
      this._sequence(subscription, message);
    }
  }

  _sequence(subscription, message) {
    const position = subscription.position;
    if (position === null) {
      this._apply(subscription, message);
    } else if (message.epoch !== position.epoch) {
      this._repair(subscription, "epoch");
    } else if (message.seq <= position.seq) {
      this._stats.duplicates += 1;
    } else if (message.seq > position.seq + 1) {
      this._stats.gaps += 1;
      this._repair(subscription, "gap");
    } else {
      this._apply(subscription, message);
    }
  }

  _follows(subscription, message) {
    const position = subscription.position;
    return message.epoch === position.epoch && message.seq === position.seq + 1;
  }

  _apply(subscription, message) {
    subscription.position = { epoch: message.epoch, seq: message.seq };
    this._deliver(message);
    this._recoveredIfDone(subscription);
  }

  _recoveredIfDone(subscription) {
    const recovering = subscription.recovering;
    if (!recovering || subscription.position.seq < recovering.target) return;
    subscription.recovering = null;
    this._emit("recovered", {
      topic: subscription.name,
      replayed: recovering.replayed,
      cause: recovering.cause,
      position: { ...subscription.position },
    });
  }

  _snapshotPage(subscription, message) {
    const loading = subscription.loading;
    // Not asked for, or from a request since superseded: the state it holds is not fenced
    // against what this client applied.
    if (!loading || subscription.fence) return;
    if (loading.seq === null) {
      loading.seq = message.seq;
      loading.epoch = message.epoch;
    } else if (message.seq !== loading.seq || message.epoch !== loading.epoch) {
      return;
    }
    const payload = message.payload || {};
    const last = payload.last !== false;
    this._emit("snapshot", {
      topic: subscription.name,
      epoch: loading.epoch,
      seq: loading.seq,
      items: Array.isArray(payload.items) ? payload.items : [],
      page: loading.page,
      first: loading.page === 0,
      last,
      reason: loading.reason,
    });
    this._emit("type:SNAPSHOT", message);
    this._emit("type:*", message);
    loading.page += 1;
    if (!last) {
      this._awaitSnapshotPage(subscription);
      return;
    }
    clearTimeout(loading.timer);
    subscription.loading = null;
    subscription.position = { epoch: loading.epoch, seq: loading.seq };
    this._stats.snapshots += 1;
    this._flush(subscription);
  }

  /** Pass on the messages held for a topic, now that its position is known. */
  _flush(subscription) {
    const held = subscription.buffer.splice(0);
    for (const message of held) {
      if (this._subscriptions.get(subscription.name) !== subscription) return;
      this._route(subscription, message);
    }
  }

  /** Ask the server again for what this topic missed, on this connection. */
  _repair(subscription, cause) {
    if (subscription.fence || subscription.loading || this._state !== State.CONNECTED) return;
    this._stats.repairs += 1;
    const ws = this._ws;
    this._fence([subscription], [subscription.name], () => cause).catch((error) => {
      if (error.code === "closed" || ws !== this._ws) return; // the reconnect resumes it
      // Refused (rate_limited, say): a fresh connection resumes every topic.
      this._emitError(error);
      this._abandon(ws, `repair failed (${error.code})`);
    });
  }

  /** A server HEARTBEAT's positions: a topic whose position is ahead of ours missed messages. */
  _checkPositions(positions) {
    for (const [name, value] of Object.entries(positions)) {
      const subscription = this._subscriptions.get(name);
      const theirs = validPosition(value);
      if (!subscription || !theirs) continue;
      const ours = subscription.position;
      if (subscription.fence || subscription.loading || ours === null) continue;
      if (theirs.epoch !== ours.epoch) {
        this._repair(subscription, "epoch");
      } else if (theirs.seq > ours.seq) {
        this._stats.gaps += 1;
        this._repair(subscription, "heartbeat");
      }
    }
  }

  /** Drop what a connection left half done for a topic; its position stays. */
  _settle(subscription) {
    subscription.fence = null;
    subscription.recovering = null;
    if (subscription.loading) {
      clearTimeout(subscription.loading.timer);
      subscription.loading = null; // asked for again: the position is still the old one
    }
    subscription.buffer.length = 0;
  }

  _forget(subscription) {
    this._settle(subscription);
    if (this._subscriptions.get(subscription.name) === subscription) {
      this._subscriptions.delete(subscription.name);
    }
    const storage = this.options.positionStorage;
    if (!storage || this._userId === null) return;
    const stored = this._storedPositions();
    if (subscription.name in stored) {
      delete stored[subscription.name];
      try {
        storage.setItem(`${POSITIONS_KEY}:${this._userId}`, JSON.stringify(stored));
      } catch {
        // the stored position stays; it names a topic that is no longer subscribed
      }
    }
  }

  _storedPositions() {
    const storage = this.options.positionStorage;
    if (!storage || this._userId === null) return {};
    try {
      const stored = JSON.parse(storage.getItem(`${POSITIONS_KEY}:${this._userId}`));
      return stored && typeof stored === "object" ? stored : {};
    } catch {
      return {};
    }
  }

  _storedPosition(name) {
    return validPosition(this._storedPositions()[name]);
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
    for (const subscription of this._subscriptions.values()) this._settle(subscription);
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
          if (ws !== this._ws) return;
          if (error.code === "timeout") {
            // No answer: the connection is dead even if the browser has not noticed yet.
            this._abandon(ws, "heartbeat timeout");
          } else {
            this._startHeartbeat(); // answered, if only with an ERROR (rate_limited): alive
          }
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

  _request(type, payload, { id = ++this._nextId, handle = null } = {}) {
    const ws = this._ws;
    if (ws === null || ws.readyState !== 1) {
      return Promise.reject(new RealtimeError("closed", "The connection is not open."));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RealtimeError("timeout", `No reply to ${type} within ${this.options.requestTimeoutMs} ms.`));
      }, this.options.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer, handle });
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

  _addGlobalListener(name, listener) {
    if (typeof globalThis.addEventListener !== "function") return;
    globalThis.addEventListener(name, listener);
    this._global.push([name, listener]);
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

/** The subscribe entry that (re)fences a topic: resume from its position, or a snapshot. */
function subscriptionEntry(subscription) {
  if (!subscription.position && !subscription.snapshot) return subscription.name;
  const entry = { topic: subscription.name };
  if (subscription.position) entry.since = { ...subscription.position };
  if (subscription.snapshot) entry.snapshot = true;
  return entry;
}

function validPosition(value) {
  return value && typeof value.epoch === "string" && Number.isInteger(value.seq)
    ? { epoch: value.epoch, seq: value.seq }
    : null;
}

function emptyAck() {
  return { action: "subscribed", topics: [], rejected: [], positions: {}, recovered: [], reset: [] };
}

function normaliseAck(payload) {
  return {
    action: payload.action,
    topics: payload.topics || [],
    rejected: payload.rejected || [],
    positions: payload.positions || {},
    recovered: payload.recovered || [],
    reset: payload.reset || [],
  };
}

/** The part of a subscribe acknowledgement about `names`. */
function ackFor(names, ack) {
  const mine = new Set(names);
  const positions = {};
  for (const [topic, position] of Object.entries(ack.positions)) {
    if (mine.has(topic)) positions[topic] = position;
  }
  return {
    action: "subscribed",
    topics: ack.topics.filter((topic) => mine.has(topic)),
    rejected: ack.rejected.filter((entry) => mine.has(entry.topic)),
    positions,
    recovered: ack.recovered.filter((topic) => mine.has(topic)),
    reset: ack.reset.filter((entry) => mine.has(entry.topic)),
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
