/**
 * Presence on the dashboard (PROTOCOL 4.7): for staff, who is online and who watches each
 * strategy; for everyone, being seen watching the strategies on their screen.
 *
 * Presence is per topic, so the page holds "presence-only" subscriptions: the topic with a
 * filter that no update passes (`id: 0`; ids start at 1), so it costs no second copy of the
 * updates the page already gets from its main topics. A user's dashboard holds
 * `user:{id}:orders` (staff: `orders`), so presence there is "online"; and each dashboard holds
 * `strategy:{id}` for the strategies it shows, so presence there is "watching".
 */

export const NOTHING = Object.freeze({ id: 0 }); // a filter no update passes: ids start at 1

const MAX_WATCHED_USERS = 100; // the staff page's user:{id}:orders presence topics, at most
const MAX_WATCHED_STRATEGIES = 50; // and strategy:{id} topics: all within the topic limit (200)

export class Presence {
  /**
   * @param {{client: object, names: object, onChange: () => void}} options `names`: a
   *   UserNames to learn usernames from; `onChange`: called when any member list changes.
   */
  constructor({ client, names, onChange }) {
    this.client = client;
    this.names = names;
    this.onChange = onChange;
    this.members = new Map(); // topic -> Map(userId -> {userId, username, since})
    this.watched = new Set(); // topics whose members and events this page follows
    this.held = new Set(); // presence-only topics this page subscribed to
    client.onPresence((topic, { event, userId, username }) => this._event(topic, event, userId, username));
  }

  /** Whether `topic` is one of the presence-only subscriptions (its snapshots are empty). */
  isPresenceOnly(topic) {
    return this.held.has(topic);
  }

  /**
   * Hold presence-only subscriptions to `topics` (not already held); with `watch`, also follow
   * their members: PRESENCE events, and who is there now. Returns how many were new.
   */
  async hold(topics, { watch = false } = {}) {
    const fresh = topics.filter((topic) => !this.held.has(topic) && !this.client.topics.includes(topic));
    for (const topic of fresh) this.held.add(topic);
    if (fresh.length) {
      const entries = fresh.map((topic) => ({ topic, filter: NOTHING, presence: watch, snapshot: false }));
      try {
        await this.client.subscribe(entries);
      } catch {
        for (const topic of fresh) this.held.delete(topic); // tried again when next asked
        return 0;
      }
    }
    if (watch) await this.follow(topics);
    return fresh.length;
  }

  /** Follow the members of topics the page already holds (with `presence: true`). */
  async follow(topics) {
    const fresh = topics.filter((topic) => !this.watched.has(topic));
    for (const topic of fresh) this.watched.add(topic);
    await this._load(fresh);
  }

  /** Ask again who is on every followed topic (after a reconnect: events may have been missed). */
  async reload() {
    await this._load([...this.watched]);
  }

  /** The staff page: presence of every user's dashboard, and of every strategy shown. */
  async watchUsers(userIds) {
    const topics = userIds.slice(0, MAX_WATCHED_USERS).map((id) => `user:${id}:orders`);
    return this.hold(topics, { watch: true });
  }

  watchStrategies(strategyIds, { watch }) {
    const topics = strategyIds.slice(0, MAX_WATCHED_STRATEGIES).map((id) => `strategy:${id}`);
    return this.hold(topics, { watch });
  }

  /** User ids present on `topic`. */
  on(topic) {
    return [...(this.members.get(topic)?.keys() ?? [])];
  }

  /** Everyone present on any followed topic but strategies' (dashboards): userId -> since. */
  online() {
    const online = new Map();
    for (const [topic, members] of this.members) {
      if (topic.startsWith("strategy:")) continue;
      for (const member of members.values()) {
        const since = online.get(member.userId);
        if (!since || (member.since && member.since < since)) online.set(member.userId, member.since);
      }
    }
    return online;
  }

  clear() {
    this.members.clear();
    this.watched.clear();
    this.held.clear();
  }

  async _load(topics) {
    const results = await Promise.allSettled(topics.map((topic) => this.client.presenceAll(topic)));
    results.forEach((result, index) => {
      if (result.status !== "fulfilled") return;
      const members = new Map();
      for (const member of result.value.members) {
        members.set(member.userId, { userId: member.userId, username: member.username, since: member.since });
        this.names.learn(member.userId, member.username);
      }
      this.members.set(topics[index], members);
    });
    if (topics.length) this.onChange();
  }

  _event(topic, event, userId, username) {
    if (!this.watched.has(topic)) return;
    let members = this.members.get(topic);
    if (!members) this.members.set(topic, (members = new Map()));
    if (event === "join") {
      members.set(userId, { userId, username, since: new Date().toISOString() });
      this.names.learn(userId, username);
    } else if (event === "leave") {
      members.delete(userId);
    }
    this.onChange();
  }
}
