/**
 * Types of the tradingrt real-time client (client.js): the `/ws` protocol of docs/PROTOCOL.md,
 * §14.1 for the client itself. Written by hand beside the module; `python3 dev.py check`
 * type-checks a usage file against it (tests/typescript/).
 */

/** Close codes the server uses (CONTRACT sections 7 and 13). */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  ABNORMAL: 1006;
  OPERATOR_DISCONNECT: 4000;
  UNAUTHENTICATED: 4401;
  USER_DEACTIVATED: 4403;
  TOO_MANY_CONNECTIONS: 4409;
  SESSIONS_REVOKED: 4410;
  RATE_LIMITED: 4429;
  STREAM_INTERRUPTED: 4503;
  SLOW_CONSUMER: 4508;
}>;

/** After these the client stays offline until `connect()` is called again. */
export declare const FATAL_CLOSE_CODES: readonly number[];

/** Connection states reported to `onState` listeners. */
export declare const State: Readonly<{
  CONNECTING: "connecting";
  CONNECTED: "connected";
  RECONNECTING: "reconnecting";
  OFFLINE: "offline";
}>;
export type State = (typeof State)[keyof typeof State];

/** A held topic's state, reported to `onSubscriptionState` listeners. */
export declare const SubscriptionState: Readonly<{
  SUBSCRIBING: "subscribing";
  SUBSCRIBED: "subscribed";
  RETRYING: "retrying";
  FAILED: "failed";
}>;
export type SubscriptionState = (typeof SubscriptionState)[keyof typeof SubscriptionState];

/** The encodings (PROTOCOL §3.3). */
export declare const Encoding: Readonly<{ JSON: "json"; MSGPACK: "msgpack" }>;
export type Encoding = (typeof Encoding)[keyof typeof Encoding];

/** The WebSocket subprotocol of each encoding. */
export declare const SUBPROTOCOLS: Readonly<{
  json: "tradingrt.json";
  msgpack: "tradingrt.msgpack";
}>;

/** Why a topic's history was not resumed: the server's reasons, and the client's own. */
export declare const ResetReason: Readonly<{
  EXPIRED: "expired";
  EPOCH: "epoch";
  UNAVAILABLE: "unavailable";
  NO_SNAPSHOT: "no_snapshot";
}>;
export type ResetReason = (typeof ResetReason)[keyof typeof ResetReason];

/** A topic's place in its history: the epoch's name and the seq of a message (§7.2). */
export interface Position {
  epoch: string;
  seq: number;
}

/** What `getToken` is told. */
export interface TokenContext {
  /**
   * `connect` before a connection attempt; `refresh` when the current token expires soon or
   * was refused (a 4401 or 4410 close, an ERROR reply): return a newer token then.
   */
  reason: "connect" | "refresh";
  /** The current session's expiry, when there is one. */
  expiresAt?: string;
  /** The server's clock minus the page's, in milliseconds (0 until measured). */
  serverTimeOffsetMs: number;
}

export interface ClientOptions {
  /**
   * Returns an access token. Throw (or reject) when none can be had for now: the client tries
   * again with backoff. Return `null` when there is none any more (signed out): the client
   * goes offline.
   */
  getToken?: (context: TokenContext) => string | null | undefined | Promise<string | null | undefined>;
  /** A fixed access token, when no `getToken` is given. */
  token?: string;
  /** The endpoint, absolute or relative to the page; default `/ws` on the page's host. */
  url?: string;
  /** `msgpack`: binary frames both ways, JSON when the server selects no subprotocol. */
  encoding?: Encoding;
  /** Send the token as `?token=` instead of in the first message. */
  tokenInUrl?: boolean;
  /** Ask for a snapshot of each topic's state on its first subscription and after a reset. */
  snapshot?: boolean;
  /** Keep topic positions across a page reload (`sessionStorage`). */
  positionStorage?: Storage | null;
  backoffBaseMs?: number;
  backoffFactor?: number;
  backoffCapMs?: number;
  /** A connection must last this long before the reconnect delays start from the first. */
  backoffResetMs?: number;
  refreshLeadMs?: number;
  refreshFraction?: number;
  requestTimeoutMs?: number;
  /** A socket must open and authenticate within this. */
  connectTimeoutMs?: number;
  /** Idle HEARTBEAT checks (0: none). */
  heartbeatIntervalMs?: number;
  /** Nothing received for this long: `stale`, and the connection is dropped (0: never). */
  staleAfterMs?: number;
  /** The WebSocket class (for tests). */
  WebSocket?: typeof WebSocket;
  /** Source of jitter in [0, 1) (for tests). */
  random?: () => number;
}

/** A filter (§4.7): payload fields and the value, or one of the values, each must have. */
export type Filter = Record<string, FilterValue | FilterValue[]>;
export type FilterValue = string | number | boolean | null;

/** Options of a subscription (§4.2, §4.7). */
export interface SubscribeOptions {
  snapshot?: boolean;
  filter?: Filter;
  /** `market:` topics only, 50 to 60000. */
  throttleMs?: number;
  presence?: boolean;
}

/** A subscribe entry: a topic name, or a topic with its options. */
export type SubscribeEntry = string | ({ topic: string } & SubscribeOptions);

export interface Rejection {
  /** The topic as sent (`invalid_topic`, `unknown_topic`) or its canonical name. */
  topic: string;
  /** `forbidden`, `invalid_topic`, `unknown_topic`, `limit_exceeded`, `invalid_option`, `unavailable`, ... */
  reason: string;
  message?: string;
}

export interface SubscribeAck {
  action: "subscribed";
  topics: string[];
  rejected: Rejection[];
  positions: Record<string, Position>;
  recovered: string[];
  reset: { topic: string; reason: string }[];
}

export interface UnsubscribeAck {
  action: "unsubscribed";
  topics: string[];
  rejected: Rejection[];
}

export interface Session {
  userId: number;
  username: string;
  connectionId: string;
  expiresAt: string;
}

/** A server message, decoded (the same in both encodings). */
export interface ServerMessage<P = Record<string, any>> {
  type: string;
  timestamp: string;
  payload: P;
  id?: string | number;
  topic?: string;
  seq?: number;
  epoch?: string;
}

export interface PresenceMember {
  userId: number;
  username: string;
  connections: number;
  since: string;
}

export interface PresencePage {
  members: PresenceMember[];
  /** The `after` of the next page, or null on the last one. */
  next: number | null;
}

export interface PresenceEvent {
  event: "join" | "leave";
  userId: number;
  username: string;
}

export interface SnapshotEvent {
  topic: string;
  epoch: string;
  seq: number;
  items: Record<string, any>[];
  page: number;
  first: boolean;
  last: boolean;
  reason: string | null;
}

export interface RecoveredEvent {
  topic: string;
  replayed: number;
  cause: string;
  position: Position;
}

export interface ResetEvent {
  topic: string;
  reason: string;
  snapshot: boolean;
  cause: string;
}

export interface CloseEvent {
  code: number;
  reason: string;
  wasClean: boolean;
  willReconnect: boolean;
}

/** Why a state was entered: some of these, depending on the state. */
export interface StateDetail {
  code?: number;
  reason?: string;
  attempt?: number;
  delayMs?: number;
  session?: Session;
  encoding?: Encoding;
}

export interface SubscriptionStateDetail {
  reason?: string;
  attempt?: number;
  delayMs?: number;
  message?: string;
}

export interface SubscriptionInfo {
  state: SubscriptionState;
  reason: string | null;
  attempt: number;
}

export interface ClientStats {
  duplicates: number;
  gaps: number;
  repairs: number;
  recovered: number;
  resets: number;
  snapshots: number;
}

/** An error the client reports: a server ERROR, a timeout, a closed connection... */
export declare class RealtimeError extends Error {
  constructor(code: string, message: string, detail?: { closeCode?: number; reply?: ServerMessage });
  readonly name: "RealtimeError";
  /** `timeout`, `closed`, `not_connected`, `disposed`, `token`, `refresh`, `encoding`, ..., or the server's code. */
  code: string;
  closeCode?: number;
  reply?: ServerMessage;
}

/** Removes the listener it was returned for. */
export type Unsubscribe = () => boolean;

/** One logical connection to `/ws` that survives drops of the physical one. */
export declare class RealtimeClient {
  constructor(options?: ClientOptions);

  readonly state: State;
  readonly session: Session | null;
  readonly encoding: Encoding;
  readonly topics: string[];
  readonly positions: Record<string, Position>;
  readonly stats: ClientStats;
  /** When the last message arrived, in ms since the epoch (page clock); null before any. */
  readonly lastMessageAt: number | null;
  readonly stale: boolean;
  readonly serverTimeOffsetMs: number;
  serverNow(): number;

  connect(): Promise<Session>;
  close(code?: number, reason?: string): void;
  dispose(): void;

  subscribe(
    topics: SubscribeEntry | Iterable<SubscribeEntry>,
    options?: SubscribeOptions,
  ): Promise<SubscribeAck>;
  unsubscribe(topics: SubscribeEntry | Iterable<SubscribeEntry>): Promise<UnsubscribeAck>;
  presence(topic: string, options?: { limit?: number; after?: number | null }): Promise<PresencePage>;
  /** All pages of `presence()` in one answer (`next` is null). */
  presenceAll(topic: string, options?: { limit?: number }): Promise<PresencePage & { next: null }>;
  request(type: string, payload?: Record<string, unknown>): Promise<ServerMessage>;
  subscriptionState(topic: string): SubscriptionInfo | null;
  savePositions(): Record<string, Position>;

  on(type: string, listener: (message: ServerMessage) => void): Unsubscribe;
  onTopic(topic: string, listener: (message: ServerMessage) => void): Unsubscribe;
  onState(listener: (state: State, detail: StateDetail) => void): Unsubscribe;
  onClose(listener: (event: CloseEvent) => void): Unsubscribe;
  onError(listener: (error: RealtimeError) => void): Unsubscribe;
  onSnapshot(listener: (event: SnapshotEvent) => void): Unsubscribe;
  onRecovered(listener: (event: RecoveredEvent) => void): Unsubscribe;
  onReset(listener: (event: ResetEvent) => void): Unsubscribe;
  onPresence(listener: (topic: string, event: PresenceEvent) => void): Unsubscribe;
  onSubscriptionState(
    listener: (topic: string, state: SubscriptionState, detail: SubscriptionStateDetail) => void,
  ): Unsubscribe;
  onStale(
    listener: (stale: boolean, detail: { lastMessageAt: number | null; silentMs: number }) => void,
  ): Unsubscribe;
}

export declare function backoffDelay(
  attempt: number,
  options: { backoffBaseMs: number; backoffFactor: number; backoffCapMs: number },
  random?: () => number,
): number;

export declare function refreshDelay(
  lifetimeMs: number,
  options: { refreshLeadMs: number; refreshFraction: number },
): number;

export declare function canonicalTopic(topic: string): string;
