// How a web team uses the client as a package: every public name, with the types it should
// have. `@ts-expect-error` lines are misuses the declarations must refuse.
import {
  CloseCode,
  Encoding,
  RealtimeClient,
  RealtimeError,
  ResetReason,
  State,
  SubscriptionState,
  backoffDelay,
  canonicalTopic,
  type PresenceMember,
  type Session,
  type SubscribeAck,
} from "@tradingrt/realtime-client";

declare function refreshAccessToken(): Promise<string | null>;
declare const render: (what: unknown) => void;

const client = new RealtimeClient({
  encoding: Encoding.MSGPACK,
  getToken: async ({ reason, serverTimeOffsetMs }) => {
    render(serverTimeOffsetMs);
    return reason === "refresh" ? refreshAccessToken() : "token";
  },
  staleAfterMs: 75_000,
  connectTimeoutMs: 10_000,
});

// @ts-expect-error: only "json" and "msgpack"
new RealtimeClient({ encoding: "xml" });
// @ts-expect-error: no such option
new RealtimeClient({ reconnect: true });

const offs: (() => boolean)[] = [
  client.onState((state, detail) => {
    if (state === State.RECONNECTING) render([detail.attempt, detail.delayMs, detail.code]);
    if (state === State.OFFLINE && detail.code === CloseCode.USER_DEACTIVATED) render("signed out");
    if (state === State.CONNECTED) render(detail.encoding);
  }),
  client.onClose(({ code, willReconnect }) => render([code, willReconnect, client.state])),
  client.onError((error: RealtimeError) => render([error.code, error.message, error.closeCode])),
  client.onSnapshot(({ topic, items, first, last, reason }) => render([topic, items, first, last, reason])),
  client.onRecovered(({ replayed, position }) => render([replayed, position.epoch, position.seq])),
  client.onReset(({ reason }) => render(reason === ResetReason.NO_SNAPSHOT)),
  client.onPresence((topic, { event, userId, username }) => render([topic, event, userId, username])),
  client.onSubscriptionState((topic, state, { reason }) =>
    render([topic, state === SubscriptionState.RETRYING, reason]),
  ),
  client.onStale((stale, { lastMessageAt, silentMs }) => render([stale, lastMessageAt, silentMs])),
  client.on("ORDER_UPDATE", ({ payload, seq, epoch }) => render([payload.id, seq, epoch])),
  client.onTopic("market:AAPL", (message) => render(message.payload.last)),
];
// @ts-expect-error: a presence event is not a message
client.onPresence((message: { type: string }) => render(message));

async function main(): Promise<void> {
  const session: Session = await client.connect();
  const ack: SubscribeAck = await client.subscribe(
    [
      `user:${session.userId}:orders`,
      { topic: "market:aapl", throttleMs: 250, presence: true },
      { topic: "orders", filter: { symbol: ["AAPL", "MSFT"], side: "BUY" }, snapshot: false },
    ],
    { snapshot: true },
  );
  render([ack.topics, ack.rejected.map(({ topic, reason }) => `${topic}: ${reason}`), ack.positions]);
  // @ts-expect-error: a filter value is a scalar or a list of them
  await client.subscribe({ topic: "orders", filter: { symbol: { nested: true } } });

  const page = await client.presence("market:AAPL", { limit: 100 });
  const { members }: { members: PresenceMember[] } = await client.presenceAll("market:AAPL");
  render([page.next ?? "last page", members.map(({ username, connections, since }) => [username, connections, since])]);

  const state = client.subscriptionState("market:AAPL");
  if (state) render([state.state, state.reason, state.attempt]);
  render([client.lastMessageAt, client.stale, client.serverNow() - Date.now(), client.encoding]);
  render([client.topics, client.positions, client.stats.gaps, canonicalTopic("market:btc-usd")]);
  render(backoffDelay(3, { backoffBaseMs: 500, backoffFactor: 2, backoffCapMs: 30_000 }));
  await client.request("SUBSCRIPTION", { action: "list" });
  await client.unsubscribe(["market:AAPL"]);
  for (const off of offs) off();
  client.close(CloseCode.NORMAL, "bye");
  client.dispose();
}

main().catch((error: unknown) => {
  if (error instanceof RealtimeError) render(error.code);
});
