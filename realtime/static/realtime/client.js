// @ts-check
/**
 * The tradingrt real-time client: an ES module for the `/ws` protocol (docs/PROTOCOL.md). It
 * authenticates with the first message (or `?token=`), speaks JSON or MessagePack (§3.3),
 * reconnects with capped, fully jittered exponential backoff, refreshes the access token in-band
 * before it expires, and correlates requests with the server's replies.
 *
 * Delivery (docs/PROTOCOL.md section 7): it keeps each topic's position (the epoch and seq of
 * the last message it applied), ignores repeats, and notices gaps (a seq jump, or a server
 * HEARTBEAT position ahead of its own); it repairs them, and resumes after every reconnect, by
 * subscribing again with `since`. A topic's first subscription asks for a snapshot of its state,
 * and so does every resume, so a history the server no longer holds comes back as a `reset`
 * followed by the state in the same request. Filtered and throttled subscriptions (§4.7) skip
 * seqs on purpose: for them a jump is no gap, and the position follows the server's.
 *
 * Liveness: a connection must open and authenticate within `connectTimeoutMs`; idle ones are
 * checked with HEARTBEATs; one from which nothing at all has come for `staleAfterMs` is dropped
 * (and `stale` reported); the browser's `offline`, `online` and page-visibility events drop,
 * retry or check the connection at once instead of at the end of a timer.
 *
 * @example
 * import { RealtimeClient } from "/static/realtime/client.js";
 *
 * const client = new RealtimeClient({ getToken: async ({ reason }) => myAccessToken(reason) });
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

/** Close codes the server uses (CONTRACT sections 7 and 13). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  ABNORMAL: 1006, // no close frame: the network or the server went away
  OPERATOR_DISCONNECT: 4000,
  UNAUTHENTICATED: 4401,
  USER_DEACTIVATED: 4403,
  TOO_MANY_CONNECTIONS: 4409,
  SESSIONS_REVOKED: 4410, // tokens issued before the revocation are refused: get a new one
  RATE_LIMITED: 4429,
  STREAM_INTERRUPTED: 4503, // the server's update stream broke: reconnect and resume
  SLOW_CONSUMER: 4508,
});

/**
 * After these the client stays offline until `connect()` is called again. (4401 and 4410 stop
 * it only when no new token can be had: see `getToken`.)
 */
export const FATAL_CLOSE_CODES = Object.freeze([CloseCode.USER_DEACTIVATED]);

/** Closes after which the next connection needs a new access token, not the same one. */
const TOKEN_CLOSE_CODES = Object.freeze([CloseCode.UNAUTHENTICATED, CloseCode.SESSIONS_REVOKED]);

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
  /** Not connected and not trying: never started, closed, disposed, signed out, or 4403. */
  OFFLINE: "offline",
});

/**
 * A held topic's state, reported to `onSubscriptionState` listeners.
 * @enum {string}
 */
export const SubscriptionState = Object.freeze({
  /** Asked for, or to be asked for by the next connection; no reply yet. */
  SUBSCRIBING: "subscribing",
  /** Acknowledged by the server on this connection. */
  SUBSCRIBED: "subscribed",
  /**
   * Refused for now (`unavailable`: the server's channel layer is down; or the subscribe was
   * answered `rate_limited`); asked again later.
   */
  RETRYING: "retrying",
  /** Refused for good (`forbidden`, `invalid_option`, ..., or revoked): no longer held. */
  FAILED: "failed",
});

/** The encodings (§3.3), chosen with the `encoding` option. */
export const Encoding = Object.freeze({ JSON: "json", MSGPACK: "msgpack" });

/** The WebSocket subprotocol of each encoding. */
export const SUBPROTOCOLS = Object.freeze({
  json: "tradingrt.json",
  msgpack: "tradingrt.msgpack",
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
 * @typedef {object} TokenContext
 * @property {"connect"|"refresh"} reason `connect` before a connection attempt; `refresh` when
 *   the current token expires soon, or was refused (a 4401 or 4410 close, or an `ERROR` reply
 *   to it): return a newer token then.
 * @property {string} [expiresAt] the current session's expiry, when there is one
 * @property {number} serverTimeOffsetMs the server's clock minus the page's, as measured
 */

/**
 * @typedef {object} ClientOptions
 * @property {(context: TokenContext) => (?string|Promise<?string>)} [getToken]
 *   Returns an access token. Throw (or reject) when none can be had *for now* (the refresh
 *   endpoint is down): the client tries again with backoff. Return `null` when there is none
 *   any more (the refresh token itself was refused: signed out): the client goes offline.
 * @property {string} [token] A fixed access token, when no `getToken` is given. A 4401 or a
 *   refused token then stops the client.
 * @property {string} [url] The endpoint, absolute or relative to the page; default `/ws` on
 *   the page's host (`wss:` on https pages).
 * @property {"json"|"msgpack"} [encoding="json"] `msgpack` offers the `tradingrt.msgpack`
 *   subprotocol and speaks binary frames both ways; if the server selects none, the client
 *   uses JSON on that connection and reports an `encoding` error.
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
 * @property {number} [backoffResetMs=5000] A connection must stay up this long after its
 *   resubscription was answered before the delays start again from the first.
 * @property {number} [refreshLeadMs=30000] Refresh this long before the token expires...
 * @property {number} [refreshFraction=0.8] ...or at this fraction of a short lifetime.
 * @property {number} [requestTimeoutMs=10000] A request without a reply by then is rejected;
 *   a snapshot whose next page takes longer is given up (`reset` with `no_snapshot`).
 * @property {number} [connectTimeoutMs=10000] A socket must open and authenticate within this,
 *   or it is dropped and the next attempt made.
 * @property {number} [heartbeatIntervalMs=25000] Idle checks of the connection (0: none); a
 *   HEARTBEAT unanswered within `requestTimeoutMs` drops the connection and reconnects.
 * @property {number} [staleAfterMs=75000] With nothing at all received for this long (2.5 of
 *   the server's 30 s heartbeat intervals) the client reports `stale` and drops the connection
 *   (0: never).
 * @property {typeof WebSocket} [WebSocket] The WebSocket class (for tests).
 * @property {() => number} [random] Source of jitter in [0, 1) (for tests).
 */

const DEFAULTS = Object.freeze({
  url: "/ws",
  encoding: Encoding.JSON,
  tokenInUrl: false,
  snapshot: true,
  positionStorage: null,
  backoffBaseMs: 500,
  backoffFactor: 2,
  backoffCapMs: 30_000,
  backoffResetMs: 5_000,
  refreshLeadMs: 30_000,
  refreshFraction: 0.8,
  requestTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  heartbeatIntervalMs: 25_000,
  staleAfterMs: 75_000,
  random: Math.random,
});

const POSITIONS_KEY = "tradingrt.realtime.positions"; // + ":" + userId, in positionStorage
const REFRESH_RETRY_MIN_MS = 250; // a failed refresh is not retried sooner than this
const REFRESH_GIVE_UP_MS = 1_000; // nor with less time than this left: the 4401 path takes over
const WAKE_PROBE_AFTER_MS = 5_000; // a tab shown again after this much silence checks its socket
const RATE_LIMITED = "rate_limited"; // the ERROR code of a frame dropped unread (§11)

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
   * @param {string} code `timeout`, `closed`, `not_connected`, `disposed`, `token`, `refresh`,
   *   `encoding`, `invalid_json`, `invalid_msgpack`, or the server's error code
   *   (`unauthenticated`, `rate_limited`, ...) or rejection reason (`forbidden`, ...).
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
  constructor(name, entry) {
    this.name = name;
    this.status = SubscriptionState.SUBSCRIBING;
    this.setOptions(entry);
    this.position = null; // {epoch, seq} of the last message applied (or of the snapshot)
    this.fence = null; // {id, since, snapshot, cause}: the (re)subscription awaiting its reply
    this.buffer = []; // messages held until the first position is known
    this.loading = null; // {head, epoch, seq, page, reason, timer}: a snapshot being received
    this.recovering = null; // {target, replayed, cause}: a replay under way
    this.restored = false; // the position came from positionStorage (a reloaded page)
    this.retry = null; // {attempt, timer, reason}: refused for now, asked again later
  }

  setOptions(entry) {
    this.snapshot = entry.snapshot; // ask for the state on the first subscription and a reset
    this.filter = entry.filter;
    this.throttleMs = entry.throttleMs;
    this.presence = entry.presence;
  }

  /** Filtered or throttled: seqs are skipped on purpose, so a jump is no gap (§4.7). */
  get shaped() {
    return this.filter !== null || this.throttleMs !== null;
  }

  /** The options that decide which messages come: a change of them needs the state again. */
  get shapeKey() {
    return stableJson([this.filter, this.throttleMs]);
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
 * `onRecovered`, `onReset`, `onPresence`, `onSubscriptionState`, `onStale`) return a function
 * that removes the listener.
 */
export class RealtimeClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    if (!Object.values(Encoding).includes(this.options.encoding)) {
      throw new TypeError(`encoding must be "json" or "msgpack", not ${this.options.encoding}.`);
    }
    // With a fixed token a refused one cannot be replaced: a 4401 stops the client.
    this._fixedToken = typeof this.options.getToken !== "function";
    if (this._fixedToken) {
      const token = this.options.token;
      this.options.getToken = () => token;
    }
    this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
    /** @type {string} */
    this._state = State.OFFLINE;
    this._session = null;
    this._userId = null; // the last authenticated user: whose stored positions apply
    this._ws = null;
    /** @type {"json"|"msgpack"} the encoding of the current socket */
    this._wire = Encoding.JSON;
    this._codec = null; // the MessagePack module, once loaded
    this._authenticatedWs = null; // the socket whose AUTHENTICATION replies are renewals
    this._generation = 0; // bumped to abandon an attempt still awaiting its token
    this._stopped = true;
    this._disposed = false;
    this._stopInfo = null;
    this._attempt = 0;
    this._refreshAttempt = 0;
    this._tokenReason = "connect"; // "refresh" once the server refused the token
    this._nextId = 0;
    this._clock = { offsetMs: 0, measured: false }; // server clock minus ours
    this._startedAt = null;
    this._lastMessageAt = null;
    this._stale = false;
    this._subscriptions = new Map(); // canonical topic -> Subscription
    this._failures = new Map(); // canonical topic -> {reason, message}: refused for good
    this._pending = new Map(); // request id -> {resolve, reject, timer, handle?, sentAt}
    this._waiters = []; // subscribe() calls waiting for the next (re)subscription
    this._ready = []; // connect() calls waiting for authentication
    this._timers = {
      reconnect: null,
      refresh: null,
      heartbeat: null,
      connect: null,
      stable: null,
      stale: null,
    };
    this._listeners = new Map(); // "type:X", "topic:X", "state", "close", ... -> Set
    this._stats = { duplicates: 0, gaps: 0, repairs: 0, recovered: 0, resets: 0, snapshots: 0 };
    this._global = [];
    // Back online, or shown again: try now rather than at the end of a long wait.
    this._addGlobalListener(globalThis, "online", () => this._wake("online"));
    this._addGlobalListener(globalThis, "offline", () => this._networkLost());
    this._addGlobalListener(globalThis.document, "visibilitychange", () => {
      if (globalThis.document.visibilityState === "visible") this._wake("visible");
    });
    // Leaving the page (a reload, too): keep the positions for the next page of this tab.
    if (this.options.positionStorage) {
      this._addGlobalListener(globalThis, "pagehide", () => this.savePositions());
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

  /**
   * The encoding of the current connection (of the last one while disconnected): `msgpack`
   * only when asked for and selected by the server.
   * @returns {"json"|"msgpack"}
   */
  get encoding() {
    return this._wire;
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

  /**
   * When the last message of any kind (a HEARTBEAT too) arrived from the server, in
   * milliseconds since the epoch by the page's clock (`Date.now()`); null before the first.
   * @returns {?number}
   */
  get lastMessageAt() {
    return this._lastMessageAt;
  }

  /**
   * True when nothing has arrived for `staleAfterMs` (what the page shows may be old); false
   * again with the next message.
   * @returns {boolean}
   */
  get stale() {
    return this._stale;
  }

  /**
   * The server's clock minus the page's, in milliseconds, measured from the timestamps of
   * the server's replies (the midpoint of each round trip); 0 until measured.
   * @returns {number}
   */
  get serverTimeOffsetMs() {
    return this._clock.offsetMs;
  }

  /** @returns {number} the server's time now, in milliseconds since the epoch (estimated) */
  serverNow() {
    return Date.now() + this._clock.offsetMs;
  }

  // --- lifecycle ------------------------------------------------------------------------

  /**
   * Start connecting (or, while waiting to reconnect, try at once). Also the way to resume
   * after `close()` or a stop.
   * @returns {Promise<object>} the session, once authenticated; rejected if the client goes
   *   offline first, or was disposed
   */
  connect() {
    if (this._disposed) return Promise.reject(disposedError());
    const ready = this._whenReady();
    if (this._state === State.CONNECTED) return ready;
    this._stopped = false;
    this._stopInfo = null;
    if (this._timers.reconnect !== null) {
      this._clearTimer("reconnect");
      this._open();
    } else if (this._ws === null && this._state === State.OFFLINE) {
      this._attempt = 0;
      this._tokenReason = "connect"; // a fresh start (a new sign-in, say) uses the token it has
      this._startedAt = Date.now();
      this._setState(State.CONNECTING);
      this._armWatchdog();
      this._open();
    }
    return ready;
  }

  /**
   * Close the connection and stop reconnecting. Pending requests are rejected, and so are
   * subscribe() calls waiting for a connection; the topics and their positions are kept, and
   * resumed by a later `connect()`.
   * @param {number} [code=1000] the code reported to `onClose` and `onState` listeners (the
   *   socket itself is closed with 1000)
   * @param {string} [reason]
   */
  close(code = CloseCode.NORMAL, reason = "closed by the client") {
    this._stop({ code, reason });
  }

  /**
   * Close for good: as `close()`, then remove the listeners this client added to the page
   * (`online`, `offline`, `visibilitychange`, `pagehide`). Later calls of `connect()`,
   * `subscribe()` and the requests reject with code `disposed`.
   */
  dispose() {
    if (this._disposed) return;
    this._disposed = true; // first: what waits for a connection is rejected as `disposed`
    this._stop({ code: CloseCode.NORMAL, reason: "disposed" });
    for (const subscription of this._subscriptions.values()) this._settle(subscription);
    for (const [target, name, listener] of this._global.splice(0)) {
      target.removeEventListener(name, listener);
    }
  }

  // --- requests -------------------------------------------------------------------------

  /**
   * Subscribe to topics. Each entry is a topic name or `{topic, filter, throttleMs, presence,
   * snapshot}` (§4.7); `options` gives the defaults of every entry. Resolves with the server's
   * acknowledgement of them: `{action, topics, rejected, positions, recovered, reset}` (§4.2;
   * rejected entries `{topic, reason}`).
   *
   * Rejected topics are dropped (state `failed`), except those refused `unavailable`, which are
   * kept and asked for again with backoff (state `retrying`); accepted ones are resumed after
   * every reconnect. A topic's first subscription asks for a snapshot of its state unless
   * `snapshot` is false; its pages reach `onSnapshot` listeners, then its updates follow. A
   * topic already held with the same options is left as it is; with another `filter` or
   * `throttleMs` it is subscribed afresh (a new snapshot, when snapshots are on).
   *
   * While not connected (or if the connection drops before the reply) the topics are held and
   * the promise resolves with the next connection's acknowledgement; it rejects if the client
   * goes offline first (`close()`, `dispose()`, a 4403, or no token to be had). An `ERROR`
   * reply rejects it and forgets the new topics, except `rate_limited` (the request was dropped
   * unread): the topics are `retrying`, asked for again with backoff until answered.
   * @param {string|object|Array<string|object>} topics
   * @param {{snapshot?: boolean, filter?: object, throttleMs?: number, presence?: boolean}} [options]
   * @returns {Promise<{action: string, topics: string[], rejected: {topic: string, reason: string}[],
   *   positions: Object<string, {epoch: string, seq: number}>, recovered: string[],
   *   reset: {topic: string, reason: string}[]}>}
   */
  subscribe(topics, options = {}) {
    if (this._disposed) return Promise.reject(disposedError());
    let entries;
    try {
      entries = toEntries(topics, options, this.options.snapshot);
    } catch (error) {
      return Promise.reject(error);
    }
    const names = entries.map((entry) => entry.name);
    const fresh = [];
    const created = new Set();
    for (const entry of entries) {
      this._failures.delete(entry.name);
      const held = this._subscriptions.get(entry.name);
      if (held) {
        const shapeKey = held.shapeKey;
        held.setOptions(entry);
        if (held.shapeKey !== shapeKey) {
          // Other messages from now on: the state held was built from the old ones.
          this._settle(held);
          held.position = null;
          held.restored = false;
          fresh.push(held);
        } else if (held.status === SubscriptionState.RETRYING) {
          this._settle(held);
          fresh.push(held);
        } // otherwise held as it is; the entry still carries its options (presence)
        continue;
      }
      const subscription = new Subscription(entry.name, entry);
      subscription.restore(this._storedPosition(entry.name));
      this._subscriptions.set(entry.name, subscription);
      this._emitSubscriptionState(subscription);
      created.add(subscription);
      fresh.push(subscription);
    }
    if (this._state !== State.CONNECTED) {
      return this._nextSubscription(names);
    }
    const cause = (subscription) => (subscription.restored ? "reload" : "subscribe");
    const ws = this._ws;
    return this._fence(fresh, names, cause).then(
      (ack) => ackFor(names, ack),
      (error) => {
        if (error.code === "closed") {
          if (this._stopped) throw error; // kept, for a later connect()
          // Asked again by the next connection's resubscription, which answers this call.
          return this._nextSubscription(names);
        }
        if (error.code === RATE_LIMITED && ws === this._ws) {
          // The frame was dropped unhandled (§11), not refused: held, and asked again after a
          // backoff delay, as a topic refused `unavailable` is.
          return this._subscribeLater(fresh, names, 1);
        }
        // Refused (an ERROR reply): not held, so never silently left out of resubscriptions.
        for (const subscription of created) this._fail(subscription, error.code, error.message);
        if (fresh.some((subscription) => !created.has(subscription)) && ws === this._ws) {
          // A held topic's new options were not taken: a new connection applies them.
          this._abandon(ws, `resubscription failed (${error.code})`);
        }
        throw error;
      },
    );
  }

  /** The acknowledgement of `names` by the next connection's resubscription. */
  _nextSubscription(names) {
    return new Promise((resolve, reject) => {
      this._waiters.push({ names, resolve, reject });
    });
  }

  /**
   * subscribe() once more after a backoff delay, its `fresh` topics `retrying` meanwhile; again
   * while each attempt is answered `rate_limited`. Settles as subscribe() does.
   */
  _subscribeLater(fresh, names, attempt) {
    const delayMs = Math.max(
      REFRESH_RETRY_MIN_MS,
      backoffDelay(attempt - 1, this.options, this.options.random),
    );
    const held = () =>
      fresh.filter((subscription) => this._subscriptions.get(subscription.name) === subscription);
    for (const subscription of held()) {
      subscription.retry = { attempt, reason: RATE_LIMITED, timer: null }; // the delay's own below
      this._setSubscriptionState(subscription, SubscriptionState.RETRYING, {
        reason: RATE_LIMITED,
        attempt,
        delayMs,
      });
    }
    return new Promise((resolve) => {
      setTimeout(resolve, delayMs);
    }).then(() => {
      if (this._stopped) throw new RealtimeError("closed", "The client was closed.");
      const subscriptions = held();
      const asked = names.filter((name) => this._subscriptions.has(name));
      if (asked.length === 0) return ackFor(names, emptyAck()); // unsubscribed meanwhile
      if (this._state !== State.CONNECTED) {
        return this._nextSubscription(names); // the next connection asks for them
      }
      for (const subscription of subscriptions) this._settle(subscription);
      const ws = this._ws;
      return this._fence(subscriptions, asked, () => "retry").then(
        (ack) => ackFor(names, ack),
        (error) => {
          if (error.code === "closed") {
            if (this._stopped) throw error;
            return this._nextSubscription(names);
          }
          if (error.code === RATE_LIMITED && ws === this._ws) {
            return this._subscribeLater(subscriptions, asked, attempt + 1);
          }
          for (const subscription of subscriptions) {
            this._fail(subscription, error.code, error.message);
          }
          throw error;
        },
      );
    });
  }

  /**
   * Unsubscribe from topics: forgets them and their positions (stored ones too); resolves with
   * the server's acknowledgement (§4.3), or at once while not connected.
   * @param {string|object|Array<string|object>} topics names, or subscribe entries
   * @returns {Promise<{action: string, topics: string[], rejected: object[]}>}
   */
  unsubscribe(topics) {
    let names;
    try {
      names = toEntries(topics, {}, false).map((entry) => entry.name);
    } catch (error) {
      return Promise.reject(error);
    }
    for (const name of names) {
      this._failures.delete(name);
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
   * One page of the users subscribed to `topic`, on any server (§4.7), ordered by `userId`:
   * `{members: [{userId, username, connections, since}], next}`, `next` being the `after` of
   * the following page, or null on the last. Rejects with the reason (`forbidden`: market
   * presence is for staff) or the server's error code; with `not_connected` unless connected.
   * @param {string} topic
   * @param {{limit?: number, after?: number}} [options] `limit`: 1 to 1000 members (default
   *   1000); `after`: a previous page's `next`
   * @returns {Promise<{members: {userId: number, username: string, connections: number,
   *   since: string}[], next: ?number}>}
   */
  presence(topic, { limit, after } = {}) {
    const name = canonicalTopic(topic);
    const payload = { action: "presence", topics: [name] };
    if (limit !== undefined) payload.limit = limit;
    if (after !== undefined && after !== null) payload.after = { [name]: after };
    return this.request("SUBSCRIPTION", payload).then((reply) => {
      const answer = reply.payload || {};
      const refused = (answer.rejected || []).find((entry) => entry.topic === name);
      if (refused) {
        throw new RealtimeError(refused.reason, `Presence of ${name} refused: ${refused.reason}.`, {
          reply,
        });
      }
      const next = answer.next && Number.isInteger(answer.next[name]) ? answer.next[name] : null;
      return { members: (answer.presence && answer.presence[name]) || [], next };
    });
  }

  /**
   * Every user subscribed to `topic`: all pages of {@link presence}, one request each, in one
   * answer of the same shape (`next` is null).
   * @param {string} topic
   * @param {{limit?: number}} [options] members per page
   * @returns {Promise<{members: {userId: number, username: string, connections: number,
   *   since: string}[], next: null}>}
   */
  async presenceAll(topic, { limit } = {}) {
    const members = [];
    let after = null;
    do {
      const page = await this.presence(topic, { limit, after });
      members.push(...page.members);
      after = page.next;
    } while (after !== null);
    return { members, next: null };
  }

  /**
   * Send any client message and wait for its reply, correlated by `id` (for example
   * `request("SUBSCRIPTION", {action: "list"})` or `request("HEARTBEAT")`).
   * @param {string} type
   * @param {object} [payload]
   * @returns {Promise<Object<string, any>>} the whole reply message; an ERROR reply rejects
   *   with a RealtimeError carrying the server's code
   */
  request(type, payload = {}) {
    if (this._disposed) return Promise.reject(disposedError());
    if (this._state !== State.CONNECTED) {
      return Promise.reject(new RealtimeError("not_connected", `Not connected (${this._state}).`));
    }
    return this._request(type, payload);
  }

  /**
   * A topic's subscription as this client sees it: `{state, reason, attempt}` (see
   * {@link SubscriptionState}; `reason` and `attempt` for `retrying` and `failed`), or null for
   * a topic it neither holds nor was refused.
   * @param {string} topic
   * @returns {?{state: string, reason: ?string, attempt: number}}
   */
  subscriptionState(topic) {
    const name = canonicalTopic(topic);
    const subscription = this._subscriptions.get(name);
    if (subscription) {
      const retry = subscription.retry;
      return {
        state: subscription.status,
        reason: retry ? retry.reason : null,
        attempt: retry ? retry.attempt : 0,
      };
    }
    const failure = this._failures.get(name);
    return failure ? { state: SubscriptionState.FAILED, reason: failure.reason, attempt: 0 } : null;
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
   * Listen to the messages delivered for one topic (its updates, and its PRESENCE events).
   * @param {string} topic
   * @param {(message: object) => void} listener
   * @returns {() => void}
   */
  onTopic(topic, listener) {
    return this._listen(`topic:${canonicalTopic(topic)}`, listener);
  }

  /**
   * Listen to state changes; `detail` tells why: `{code, reason}` of the close that caused
   * `reconnecting` or `offline`, `{attempt, delayMs}` of the next reconnect attempt, and
   * `{session, encoding}` of a connection. `connected` is reported once the resubscription has
   * been sent; the server answers in order, so a request made from the listener is answered
   * after the resubscription.
   * @param {(state: string, detail: object) => void} listener
   * @returns {() => void}
   */
  onState(listener) {
    return this._listen("state", listener);
  }

  /**
   * Listen to closes of the underlying connection. `client.state` is already the state the
   * close leads to (`reconnecting` or `offline`).
   * @param {(event: {code: number, reason: string, wasClean: boolean, willReconnect: boolean}) => void} listener
   * @returns {() => void}
   */
  onClose(listener) {
    return this._listen("close", listener);
  }

  /**
   * Listen to errors not tied to a request: uncorrelated server ERRORs (`rate_limited`, the
   * token's expiry), a failed `getToken` (`token`) or refresh (`refresh`), a refused token
   * (`unauthenticated`), an encoding the server did not select (`encoding`), an unreadable
   * message (`invalid_json`, `invalid_msgpack`).
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
   * `heartbeat` (the server's position was ahead), `reload` (positions from storage), or
   * `retry` (a topic refused `unavailable` before).
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

  /**
   * Listen to presence events of the topics subscribed with `presence: true` (§4.7): a user's
   * first connection subscribed (`join`), or their last one left (`leave`, after the server's
   * grace period).
   * @param {(topic: string, event: {event: "join"|"leave", userId: number, username: string}) => void} listener
   * @returns {() => void}
   */
  onPresence(listener) {
    return this._listen("presence", listener);
  }

  /**
   * Listen to changes of a topic's subscription state ({@link SubscriptionState}); `detail`
   * has the `reason` of `retrying` and `failed` (a rejection reason, `revoked`, or the code of
   * an `ERROR` reply), the `attempt` and `delayMs` of a retry.
   * @param {(topic: string, state: string, detail: {reason?: string, attempt?: number,
   *   delayMs?: number, message?: string}) => void} listener
   * @returns {() => void}
   */
  onSubscriptionState(listener) {
    return this._listen("subscription", listener);
  }

  /**
   * Listen to staleness: `true` when nothing (not even a HEARTBEAT) has arrived for
   * `staleAfterMs`, `false` with the next message.
   * @param {(stale: boolean, detail: {lastMessageAt: ?number, silentMs: number}) => void} listener
   * @returns {() => void}
   */
  onStale(listener) {
    return this._listen("stale", listener);
  }

  // --- internals: the connection --------------------------------------------------------

  async _open() {
    const generation = ++this._generation;
    this._clearTimer("reconnect");
    let token;
    try {
      token = await this.options.getToken(this._tokenContext(this._tokenReason));
    } catch (error) {
      if (generation !== this._generation || this._stopped) return;
      this._emitError(new RealtimeError("token", `getToken failed: ${describe(error)}`));
      this._scheduleReconnect({ code: 0, reason: "no token" });
      return;
    }
    if (generation !== this._generation || this._stopped) return;
    if (token === null || token === undefined || token === "") {
      this._stop({ code: CloseCode.UNAUTHENTICATED, reason: "no access token (signed out)" });
      return;
    }
    let codec = null;
    if (this.options.encoding === Encoding.MSGPACK) {
      try {
        codec = await loadMsgpack();
      } catch (error) {
        this._emitError(
          new RealtimeError("encoding", `Cannot load MessagePack, using JSON: ${describe(error)}`),
        );
      }
      if (generation !== this._generation || this._stopped) return;
    }
    let url = resolveUrl(this.options.url);
    if (this.options.tokenInUrl) {
      url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    }
    let ws;
    try {
      ws = codec
        ? new this._WebSocket(url, [SUBPROTOCOLS.msgpack, SUBPROTOCOLS.json])
        : new this._WebSocket(url);
    } catch (error) {
      this._emitError(new RealtimeError("closed", `Cannot open ${url}: ${describe(error)}`));
      this._scheduleReconnect({ code: 0, reason: "cannot open" });
      return;
    }
    this._ws = ws;
    this._wire = Encoding.JSON;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this._receive(ws, event.data);
    ws.onclose = (event) => this._closed(ws, event.code, event.reason, event.wasClean);
    ws.onerror = () => {}; // the close event that follows says what happened
    this._timers.connect = setTimeout(() => {
      this._timers.connect = null;
      if (ws === this._ws) this._abandon(ws, "connect timeout");
    }, this.options.connectTimeoutMs);
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._negotiated(ws, codec);
      if (this.options.tokenInUrl) return; // the server's first message authenticates us
      this._request("AUTHENTICATION", { token }).catch((error) => {
        if (ws !== this._ws || error.code === "closed") return;
        if (error.code === "timeout") {
          this._abandon(ws, "authentication timeout");
        } else {
          // Refused: that token will not do. A fixed one stops the client (as a 4401 does);
          // otherwise the next attempt asks getToken for a newer one.
          this._emitError(error);
          this._abandon(ws, error.message, CloseCode.UNAUTHENTICATED);
        }
      });
    };
  }

  /** The encoding the server selected for `ws` (§3.3): MessagePack only if both agreed. */
  _negotiated(ws, codec) {
    if (!codec) return;
    if (ws.protocol === SUBPROTOCOLS.msgpack) {
      this._codec = codec;
      this._wire = Encoding.MSGPACK;
      return;
    }
    this._emitError(
      new RealtimeError(
        "encoding",
        `The server selected ${ws.protocol ? `"${ws.protocol}"` : "no subprotocol"} instead of ` +
          `${SUBPROTOCOLS.msgpack}; this connection uses JSON.`,
      ),
    );
  }

  _tokenContext(reason) {
    const context = { reason, serverTimeOffsetMs: this._clock.offsetMs };
    if (this._session) context.expiresAt = this._session.expiresAt;
    return context;
  }

  _receive(ws, data) {
    if (ws !== this._ws) return;
    const receivedAt = Date.now();
    this._heard(receivedAt);
    let message;
    try {
      message = this._decode(data);
    } catch (error) {
      const code = typeof data === "string" ? "invalid_json" : "invalid_msgpack";
      this._emitError(new RealtimeError(code, `Unreadable message from the server: ${describe(error)}`));
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
        const serverTime = message.type === "HEARTBEAT" ? payload.serverTime : message.timestamp;
        this._sampleClock(serverTime, pending.sentAt, receivedAt);
        // At once, not in a promise callback: the messages after this reply depend on it.
        if (pending.handle) pending.handle(message);
        pending.resolve(message);
      }
    } else if (message.type === "ERROR") {
      this._emitError(new RealtimeError(payload.code, payload.message, { reply: message }));
    } else if (message.type === "HEARTBEAT" || message.type === "AUTHENTICATION") {
      this._sampleClock(payload.serverTime || message.timestamp, null, receivedAt);
    }
    if (message.type === "AUTHENTICATION" && payload.status === "authenticated") {
      this._authenticated(ws, message);
    } else if (message.type === "HEARTBEAT" && payload.positions) {
      this._checkPositions(payload.positions);
    } else if (message.type === "SUBSCRIPTION" && payload.action === "revoked") {
      for (const name of payload.topics || []) {
        const subscription = this._subscriptions.get(name);
        if (subscription) this._fail(subscription, payload.reason || "revoked", "revoked by the server");
      }
    } else if (message.type === "PRESENCE" && typeof message.topic === "string") {
      const { event, userId, username } = payload;
      this._emit("presence", message.topic, { event, userId, username });
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

  _decode(data) {
    if (typeof data === "string") return JSON.parse(data);
    if (!this._codec || this._wire !== Encoding.MSGPACK) {
      throw new Error("a binary frame on a JSON connection");
    }
    return this._codec.decode(new Uint8Array(data));
  }

  _encode(message) {
    return this._wire === Encoding.MSGPACK
      ? this._codec.encode(message, { ignoreUndefined: true })
      : JSON.stringify(message);
  }

  /**
   * A server timestamp: the clock offset is taken from replies to our requests (the server's
   * time against the midpoint of the round trip); an unsolicited message (one-way, so late by
   * the network's delay) only serves until a reply has been measured.
   */
  _sampleClock(serverTime, sentAt, receivedAt) {
    const serverMs = typeof serverTime === "string" ? Date.parse(serverTime) : NaN;
    if (!Number.isFinite(serverMs)) return;
    if (sentAt === null || sentAt === undefined) {
      if (!this._clock.measured) this._clock.offsetMs = serverMs - receivedAt;
      return;
    }
    this._clock.offsetMs = Math.round(serverMs - (sentAt + receivedAt) / 2);
    this._clock.measured = true;
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
    this._refreshAttempt = 0;
    this._scheduleRefresh();
    if (renewal) return;
    this._authenticatedWs = ws;
    this._tokenReason = "connect";
    this._clearTimer("connect");
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
    this._setState(State.CONNECTED, { session: this._session, encoding: this._wire });
    for (const waiter of this._ready.splice(0)) waiter.resolve(this._session);
  }

  /** Subscribe to every held topic on a new connection, resuming each from its position. */
  _resubscribe() {
    const waiters = this._waiters.splice(0);
    const subscriptions = [...this._subscriptions.values()];
    for (const subscription of subscriptions) this._settle(subscription);
    const ws = this._ws;
    const stable = () => {
      // Only once this connection has lasted: a server that drops every connection soon
      // after its login keeps being retried with growing delays, not every half second.
      this._clearTimer("stable");
      this._timers.stable = setTimeout(() => {
        this._timers.stable = null;
        if (ws === this._ws) this._attempt = 0;
      }, this.options.backoffResetMs);
    };
    if (subscriptions.length === 0) {
      stable();
      for (const waiter of waiters) waiter.resolve(ackFor(waiter.names, emptyAck()));
      return;
    }
    const names = subscriptions.map((subscription) => subscription.name);
    const cause = (subscription) => (subscription.restored ? "reload" : "reconnect");
    this._fence(subscriptions, names, cause).then(
      (ack) => {
        stable();
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
   * the reply. Every entry carries its topic's options (the server replaces a held topic's
   * options with the entry's). Resolves with the reply's payload, normalised.
   */
  _fence(subscriptions, names, cause) {
    const id = ++this._nextId;
    const fenced = new Set();
    const entries = names.map((name) => {
      const subscription = this._subscriptions.get(name);
      if (!subscription) return name;
      if (!subscriptions.includes(subscription)) return subscriptionEntry(subscription, false);
      fenced.add(subscription);
      subscription.fence = {
        id,
        since: subscription.position ? { ...subscription.position } : null,
        snapshot: subscription.snapshot,
        cause: cause(subscription),
      };
      subscription.restored = false;
      return subscriptionEntry(subscription, true);
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
    let shapedRecovery = false;
    for (const name of payload.topics || []) {
      const subscription = this._subscriptions.get(name);
      if (!subscription || !subscription.fence || subscription.fence.id !== id) continue;
      const fence = subscription.fence;
      subscription.fence = null;
      subscription.retry = null;
      this._setSubscriptionState(subscription, SubscriptionState.SUBSCRIBED);
      const head = validPosition(positions[name]);
      if (fence.since && recovered.has(name)) {
        this._stats.recovered += 1;
        const target = head ? head.seq : fence.since.seq;
        subscription.recovering = {
          target,
          // Each missed seq is replayed; a filtered or throttled replay is counted as it comes.
          replayed: subscription.shaped ? 0 : Math.max(0, target - fence.since.seq),
          cause: fence.cause,
        };
        shapedRecovery = shapedRecovery || (subscription.shaped && target > fence.since.seq);
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
    // Rejected, or (never expected) not mentioned at all: not held, unless worth retrying.
    const rejected = new Map();
    for (const entry of payload.rejected || []) {
      if (typeof entry.topic === "string") rejected.set(entry.topic, entry);
    }
    for (const subscription of [...this._subscriptions.values()]) {
      if (!subscription.fence || subscription.fence.id !== id) continue;
      const rejection = rejected.get(subscription.name);
      if (rejection && rejection.reason === "unavailable") {
        this._retryLater(subscription, rejection.reason);
      } else {
        this._fail(
          subscription,
          rejection ? rejection.reason : "not_acknowledged",
          rejection && rejection.message,
        );
      }
    }
    // A filtered or throttled replay may end below the reply's position: a HEARTBEAT, answered
    // after the whole replay, brings the positions that end it.
    if (shapedRecovery) this._request("HEARTBEAT", {}).catch(() => {});
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
      // (On a filtered or throttled topic the next seq is unknown: its replay brings them.)
      if (subscription.position === null) {
        subscription.buffer.push(message);
      } else if (!subscription.shaped && this._follows(subscription, message)) {
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
    } else if (message.seq > position.seq + 1 && !subscription.shaped) {
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
    const recovering = subscription.recovering;
    if (recovering && subscription.shaped && message.seq <= recovering.target) {
      recovering.replayed += 1;
    }
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

  /**
   * A HEARTBEAT's positions: a topic whose position is ahead of ours missed messages. On a
   * filtered or throttled topic that is expected: the position just moves up to the server's.
   */
  _checkPositions(positions) {
    for (const [name, value] of Object.entries(positions)) {
      const subscription = this._subscriptions.get(name);
      const theirs = validPosition(value);
      if (!subscription || !theirs) continue;
      const ours = subscription.position;
      if (subscription.fence || subscription.loading || ours === null) continue;
      if (theirs.epoch !== ours.epoch) {
        this._repair(subscription, "epoch");
      } else if (theirs.seq > ours.seq && subscription.shaped) {
        subscription.position = theirs; // everything sent up to it has arrived before this
        this._recoveredIfDone(subscription);
      } else if (theirs.seq > ours.seq) {
        this._stats.gaps += 1;
        this._repair(subscription, "heartbeat");
      }
    }
  }

  /** A topic refused `unavailable`: held, and asked for again after a backoff delay. */
  _retryLater(subscription, reason) {
    subscription.fence = null;
    const attempt = subscription.retry ? subscription.retry.attempt + 1 : 1;
    const delayMs = Math.max(
      REFRESH_RETRY_MIN_MS,
      backoffDelay(attempt - 1, this.options, this.options.random),
    );
    const ws = this._ws;
    const retry = { attempt, reason, timer: null };
    retry.timer = setTimeout(() => {
      retry.timer = null;
      if (subscription.retry !== retry || ws !== this._ws || this._state !== State.CONNECTED) {
        return; // a reconnect asks for it anyway
      }
      this._fence([subscription], [subscription.name], () => "retry").catch((error) => {
        if (error.code === "closed" || ws !== this._ws) return;
        this._fail(subscription, error.code, error.message);
      });
    }, delayMs);
    subscription.retry = retry;
    this._setSubscriptionState(subscription, SubscriptionState.RETRYING, {
      reason,
      attempt,
      delayMs,
    });
  }

  /** Drop what a connection left half done for a topic; its position stays. */
  _settle(subscription) {
    subscription.fence = null;
    subscription.recovering = null;
    if (subscription.loading) {
      clearTimeout(subscription.loading.timer);
      subscription.loading = null; // asked for again: the position is still the old one
    }
    if (subscription.retry && subscription.retry.timer !== null) {
      clearTimeout(subscription.retry.timer);
      subscription.retry.timer = null;
    }
    subscription.buffer.length = 0;
  }

  /** A topic refused for good: forgotten, and its reason kept for subscriptionState(). */
  _fail(subscription, reason, message) {
    if (this._subscriptions.get(subscription.name) !== subscription) return;
    this._forget(subscription);
    this._failures.set(subscription.name, { reason });
    subscription.status = SubscriptionState.FAILED;
    const detail = { reason };
    if (message) detail.message = message;
    this._emit("subscription", subscription.name, SubscriptionState.FAILED, detail);
  }

  _forget(subscription) {
    this._settle(subscription);
    subscription.retry = null;
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

  _setSubscriptionState(subscription, state, detail = {}) {
    if (subscription.status === state && state !== SubscriptionState.RETRYING) return;
    subscription.status = state;
    this._emit("subscription", subscription.name, state, detail);
  }

  _emitSubscriptionState(subscription) {
    this._emit("subscription", subscription.name, subscription.status, {});
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
    for (const name of ["refresh", "heartbeat", "connect", "stable"]) this._clearTimer(name);
    const info = this._stopInfo || { code, reason };
    const closed = new RealtimeError("closed", `The connection closed (${info.code}).`, {
      closeCode: info.code,
    });
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(closed);
    }
    this._pending.clear();
    if (TOKEN_CLOSE_CODES.includes(info.code)) this._tokenReason = "refresh";
    const fatal =
      FATAL_CLOSE_CODES.includes(info.code) ||
      (this._fixedToken && TOKEN_CLOSE_CODES.includes(info.code));
    const willReconnect = !this._stopped && !fatal;
    const previous = this._state;
    // Listeners of the close see the state it leads to; onState listeners are told next.
    this._state = willReconnect ? State.RECONNECTING : State.OFFLINE;
    this._emit("close", { code: info.code, reason: info.reason, wasClean, willReconnect });
    if (willReconnect) {
      this._scheduleReconnect(info);
    } else {
      this._goOffline(info, closed, previous);
    }
    for (const subscription of this._subscriptions.values()) {
      this._settle(subscription);
      if (subscription.status === SubscriptionState.SUBSCRIBED) {
        this._setSubscriptionState(subscription, SubscriptionState.SUBSCRIBING);
      }
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

  _goOffline(info, error, previous = this._state) {
    if (this._disposed) error = disposedError();
    this._stopped = true;
    this._session = null;
    this._state = State.OFFLINE;
    for (const name of ["reconnect", "stale"]) this._clearTimer(name);
    for (const waiter of this._waiters.splice(0)) waiter.reject(error);
    for (const waiter of this._ready.splice(0)) waiter.reject(error);
    if (previous !== State.OFFLINE) {
      this._setState(State.OFFLINE, { code: info.code, reason: info.reason });
    }
  }

  _whenReady() {
    if (this._state === State.CONNECTED) return Promise.resolve(this._session);
    return new Promise((resolve, reject) => {
      this._ready.push({ resolve, reject });
    });
  }

  // --- internals: liveness ----------------------------------------------------------------

  /** A message arrived: note when, and end staleness. */
  _heard(now) {
    this._lastMessageAt = now;
    if (this._stale) {
      this._stale = false;
      this._emit("stale", false, { lastMessageAt: now, silentMs: 0 });
    }
  }

  /** Look again at the silence when `staleAfterMs` may have passed since the last message. */
  _armWatchdog() {
    this._clearTimer("stale");
    const limit = this.options.staleAfterMs;
    if (!limit || this._stopped) return;
    // While stale, look again a whole interval later; else when the silence reaches it.
    const from = this._stale ? Date.now() : (this._lastMessageAt ?? this._startedAt);
    const waitMs = Math.max(0, from + limit - Date.now());
    this._timers.stale = setTimeout(() => this._watch(), waitMs);
  }

  _watch() {
    this._clearTimer("stale");
    const limit = this.options.staleAfterMs;
    if (!limit || this._stopped) return;
    const silentMs = Date.now() - (this._lastMessageAt ?? this._startedAt);
    if (silentMs >= limit) {
      if (!this._stale) {
        this._stale = true;
        this._emit("stale", true, { lastMessageAt: this._lastMessageAt, silentMs });
      }
      // §8: a browser cannot see pings; a socket this quiet is dead even if it looks open.
      if (this._ws !== null && this._state === State.CONNECTED) {
        this._abandon(this._ws, `nothing received for ${(silentMs / 1000).toFixed(1)} s`);
      }
    }
    this._armWatchdog();
  }

  /** `online`, or the page shown again: retry now if waiting; check a quiet connection. */
  _wake(why) {
    if (this._stopped) return;
    if (this._timers.reconnect !== null) {
      this._clearTimer("reconnect");
      this._open();
      return;
    }
    const ws = this._ws;
    if (ws === null || this._state !== State.CONNECTED) return;
    this._watch(); // timers of a hidden page may have run late
    const silentMs = Date.now() - (this._lastMessageAt ?? 0);
    if (ws === this._ws && silentMs >= WAKE_PROBE_AFTER_MS) {
      this._request("HEARTBEAT", {}).catch((error) => {
        if (ws === this._ws && error.code === "timeout") {
          this._abandon(ws, `${why}: no answer to a HEARTBEAT`);
        }
      });
    }
  }

  /** The browser went offline: its sockets cannot work, whatever they look like. */
  _networkLost() {
    if (this._ws !== null) this._abandon(this._ws, "the browser went offline");
  }

  // --- internals: token refresh and heartbeat -------------------------------------------

  _scheduleRefresh() {
    this._clearTimer("refresh");
    const expiresAtMs = Date.parse(this._session.expiresAt);
    if (!Number.isFinite(expiresAtMs)) return;
    const lifetimeMs = expiresAtMs - this.serverNow();
    this._timers.refresh = setTimeout(
      () => this._refresh(expiresAtMs),
      refreshDelay(lifetimeMs, this.options),
    );
  }

  async _refresh(expiresAtMs) {
    this._timers.refresh = null;
    const ws = this._ws;
    let token;
    try {
      token = await this.options.getToken(this._tokenContext("refresh"));
    } catch (error) {
      if (ws !== this._ws || this._stopped) return;
      this._emitError(new RealtimeError("refresh", `Token refresh failed: ${describe(error)}`));
      this._retryRefresh(expiresAtMs);
      return;
    }
    if (ws !== this._ws || this._state !== State.CONNECTED) return;
    if (token === null || token === undefined || token === "") {
      this._stop({ code: CloseCode.UNAUTHENTICATED, reason: "no access token (signed out)" });
      return;
    }
    try {
      await this._request("AUTHENTICATION", { token }); // the reply reschedules (_authenticated)
    } catch (error) {
      if (ws !== this._ws || error.code === "closed") return;
      this._emitError(new RealtimeError("refresh", `Token refresh failed: ${describe(error)}`));
      this._retryRefresh(expiresAtMs);
    }
  }

  _retryRefresh(expiresAtMs) {
    // Again with backoff while there is time; past the expiry the server closes with 4401,
    // and the reconnection asks for a new token (with backoff too).
    const remainingMs = expiresAtMs - this.serverNow();
    if (!(remainingMs > REFRESH_GIVE_UP_MS)) return;
    const delayMs = Math.min(
      Math.max(
        REFRESH_RETRY_MIN_MS,
        backoffDelay(this._refreshAttempt, this.options, this.options.random),
      ),
      remainingMs / 2,
    );
    this._refreshAttempt += 1;
    this._clearTimer("refresh");
    this._timers.refresh = setTimeout(() => this._refresh(expiresAtMs), delayMs);
  }

  _startHeartbeat() {
    const interval = this.options.heartbeatIntervalMs;
    if (!interval) return;
    const ws = this._ws;
    this._clearTimer("heartbeat");
    this._timers.heartbeat = setTimeout(() => {
      this._timers.heartbeat = null;
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

  /**
   * Drop `ws` now, without waiting for its close event, reporting `code` (1006: no close frame).
   * @param {WebSocket} ws
   * @param {string} reason
   * @param {number} [code]
   */
  _abandon(ws, reason, code = CloseCode.ABNORMAL) {
    ws.onclose = null;
    try {
      ws.close();
    } catch {
      // already closing
    }
    this._closed(ws, code, reason, false);
  }

  // --- internals: plumbing --------------------------------------------------------------

  /**
   * Send a message with an `id` and wait for the reply that echoes it.
   * @param {string} type
   * @param {object} payload
   * @param {{id?: number, handle?: ?((reply: Object<string, any>) => void)}} [options]
   *   `handle` is called with the reply at once, before the messages after it are read
   * @returns {Promise<Object<string, any>>}
   */
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
      this._pending.set(id, { resolve, reject, timer, handle, sentAt: Date.now() });
      try {
        ws.send(this._encode({ type, id, timestamp: new Date().toISOString(), payload }));
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

  _addGlobalListener(target, name, listener) {
    if (!target || typeof target.addEventListener !== "function") return;
    target.addEventListener(name, listener);
    this._global.push([target, name, listener]);
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

// The MessagePack codec (@msgpack/msgpack, vendored unmodified: vendor/msgpack/README.md),
// loaded on first use, so that a JSON client never fetches it.
let msgpackModule = null;

function loadMsgpack() {
  if (msgpackModule === null) {
    msgpackModule = import("./vendor/msgpack/index.mjs").catch((error) => {
      msgpackModule = null; // a later attempt may succeed
      throw error;
    });
  }
  return msgpackModule;
}

function disposedError() {
  return new RealtimeError("disposed", "This client was disposed.");
}

/** Subscribe entries, normalised: `{name, snapshot, filter, throttleMs, presence}`, once each. */
function toEntries(topics, options, defaultSnapshot) {
  const single =
    typeof topics === "string" ||
    (topics !== null && typeof topics === "object" && typeof topics[Symbol.iterator] !== "function");
  const list = single ? [topics] : [...topics];
  const entries = new Map(); // a topic named twice: the first entry counts, as on the server
  for (const item of list) {
    const raw = typeof item === "string" ? { topic: item } : item;
    if (!raw || typeof raw.topic !== "string" || raw.topic === "") {
      throw new TypeError(
        "A subscribe entry is a topic name or {topic, filter, throttleMs, presence, snapshot}.",
      );
    }
    const name = canonicalTopic(raw.topic);
    if (entries.has(name)) continue;
    entries.set(name, {
      name,
      snapshot: Boolean(raw.snapshot ?? options.snapshot ?? defaultSnapshot),
      filter: raw.filter ?? options.filter ?? null,
      throttleMs: raw.throttleMs ?? options.throttleMs ?? null,
      presence: Boolean(raw.presence ?? options.presence ?? false),
    });
  }
  return [...entries.values()];
}

/**
 * The subscribe entry of a topic: its options, and when `fence` is set, how to (re)fence it:
 * resume from its position, or a snapshot. A plain name when there is nothing to add.
 */
function subscriptionEntry(subscription, fence) {
  const entry = { topic: subscription.name };
  if (subscription.filter !== null) entry.filter = subscription.filter;
  if (subscription.throttleMs !== null) entry.throttleMs = subscription.throttleMs;
  if (subscription.presence) entry.presence = true;
  if (fence && subscription.position) entry.since = { ...subscription.position };
  if (fence && subscription.snapshot) entry.snapshot = true;
  return Object.keys(entry).length === 1 ? subscription.name : entry;
}

/** JSON with object keys sorted, to compare options. */
function stableJson(value) {
  return JSON.stringify(value, (_key, inner) =>
    inner && typeof inner === "object" && !Array.isArray(inner)
      ? Object.fromEntries(Object.entries(inner).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : inner,
  );
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
