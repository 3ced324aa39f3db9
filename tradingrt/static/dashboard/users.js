/**
 * Usernames for the user ids in rows, for staff: asked of GET /api/users/ in batches as new ids
 * appear, and learnt from AUTHENTICATION and presence messages on the way.
 */

const BATCH_DELAY_MS = 50; // collect the ids of one snapshot or burst into one request
const MAX_IDS_PER_REQUEST = 200; // the endpoint's limit

export class UserNames {
  /**
   * @param {{api: (path: string) => Promise<object[]>, onNames: () => void}} options
   *   `onNames` is called after names arrive, to render them.
   */
  constructor({ api, onNames }) {
    this.api = api;
    this.onNames = onNames;
    this.names = new Map(); // id -> username
    this.wanted = new Set();
    this.asked = new Set();
    this.enabled = false;
    this._timer = null;
  }

  /** Start looking names up (staff), or stop (anyone else: ids are shown as they are). */
  enable(on) {
    this.enabled = on;
    if (on && this.wanted.size) this._schedule();
  }

  /** A name learnt elsewhere (the session, a presence message). */
  learn(id, username) {
    if (!Number.isInteger(id) || !username || this.names.get(id) === username) return;
    this.names.set(id, username);
    this.onNames();
  }

  /** The text for a user id: the username when known, else "#id"; asks for it if unknown. */
  text(id) {
    if (id === null || id === undefined) return "—";
    const name = this.names.get(id);
    if (name) return name;
    if (!this.asked.has(id)) {
      this.wanted.add(id);
      if (this.enabled) this._schedule();
    }
    return `#${id}`;
  }

  /** Every user's id, ordered by id (staff), learning their names on the way. */
  async all() {
    const users = await this.api("/api/users/");
    for (const { id, username } of users) this.names.set(id, username);
    this.onNames();
    return users.map((user) => user.id);
  }

  clear() {
    clearTimeout(this._timer);
    this._timer = null;
    this.names.clear();
    this.wanted.clear();
    this.asked.clear();
    this.enabled = false;
  }

  _schedule() {
    if (this._timer === null) this._timer = setTimeout(() => this._fetch(), BATCH_DELAY_MS);
  }

  async _fetch() {
    this._timer = null;
    const ids = [...this.wanted].slice(0, MAX_IDS_PER_REQUEST);
    if (!ids.length || !this.enabled) return;
    for (const id of ids) {
      this.wanted.delete(id);
      this.asked.add(id);
    }
    try {
      const users = await this.api(`/api/users/?ids=${ids.join(",")}`);
      for (const { id, username } of users) this.names.set(id, username);
      this.onNames();
    } catch (error) {
      if (error.status === 403) {
        this.enabled = false; // a permission holder who is not staff: ids it is
      } else {
        for (const id of ids) this.asked.delete(id); // try again when they are next shown
      }
    }
    if (this.wanted.size && this.enabled) this._schedule();
  }
}
