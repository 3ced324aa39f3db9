/**
 * Sign-in for the dashboard: JWTs from /api/auth/token/, kept in sessionStorage (this tab only,
 * never a cookie or a URL), the access token refreshed through /api/auth/token/refresh/.
 */

const STORAGE_KEY = "tradingrt.dashboard.tokens";
const REFRESH_MARGIN_MS = 60_000; // refresh an access token that expires sooner than this
// While the refresh endpoint fails, the token in hand serves until this close to its expiry
// (by the page's clock: a server that disagrees answers 401, which forces a refresh).
const STILL_VALID_MS = 2_000;

/**
 * An HTTP error from the API, with its status, DRF's detail and the whole body (`fields`: a
 * 400's messages per field, as DRF keys them: `{"quantity": ["..."], "non_field_errors": [...]}`).
 */
export class ApiError extends Error {
  constructor(status, detail, body = null) {
    super(detail || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.fields = body && typeof body === "object" && !Array.isArray(body) && !body.detail ? body : {};
  }
}

/**
 * The claims of a JWT (not verified: the server does that; the page only reads `exp`).
 * @param {string} token
 * @returns {object}
 */
export function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

/** The signed-in user's tokens and authenticated fetches. */
export class Session {
  /**
   * @param {{storage?: Storage, onExpired?: (message: string) => void}} [options]
   *   `onExpired` is called when the refresh token is refused: the user must sign in again.
   */
  constructor({ storage = globalThis.sessionStorage, onExpired = () => {} } = {}) {
    this.storage = storage;
    this.onExpired = onExpired;
    this.tokens = this._load();
    this._refreshing = null;
  }

  get signedIn() {
    return this.tokens !== null;
  }

  /** Exchange a username and password for tokens; throws an Error with a readable message. */
  async signIn(username, password) {
    const response = await fetch("/api/auth/token/", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new ApiError(
        response.status,
        response.status === 401
          ? "Wrong username or password."
          : body.detail || `Sign-in failed (HTTP ${response.status}).`,
      );
    }
    this._save({ access: body.access, refresh: body.refresh });
  }

  signOut() {
    this.tokens = null;
    this.storage.removeItem(STORAGE_KEY);
  }

  /**
   * A usable access token: refreshed first when `forceRefresh` or when it expires soon.
   * @param {{forceRefresh?: boolean}} [options]
   * @returns {Promise<string>}
   */
  async accessToken({ forceRefresh = false } = {}) {
    if (!this.tokens) throw new ApiError(401, "Not signed in.");
    const expiresAtMs = (jwtClaims(this.tokens.access).exp || 0) * 1000;
    if (forceRefresh || expiresAtMs - Date.now() < REFRESH_MARGIN_MS) {
      try {
        await this.refresh();
      } catch (error) {
        // A refresh ahead of time failed (the endpoint is down; a refused refresh token has
        // signed out): the token in hand is still good, so requests need not fail yet.
        if (forceRefresh || !this.tokens || expiresAtMs - Date.now() < STILL_VALID_MS) throw error;
      }
    }
    return this.tokens.access;
  }

  /** Get a new access token with the refresh token; one request at a time. */
  refresh() {
    if (!this._refreshing) {
      this._refreshing = this._refresh().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _refresh() {
    const tokens = this.tokens;
    if (!tokens) throw new ApiError(401, "Not signed in.");
    const response = await fetch("/api/auth/token/refresh/", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ refresh: tokens.refresh }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      this.signOut();
      this.onExpired("Your session expired. Sign in again.");
      throw new ApiError(401, body.detail || "The session expired.");
    }
    if (!response.ok) throw new ApiError(response.status, body.detail);
    if (this.tokens === tokens) {
      this._save({ access: body.access, refresh: body.refresh || tokens.refresh });
    }
  }

  /**
   * GET (or send `body` with `method`) an API path as the signed-in user; retried once with a
   * refreshed token on 401.
   * @param {string} path
   * @param {{method?: string, body?: object}} [options]
   */
  async api(path, { method = "GET", body } = {}) {
    for (let attempt = 0; ; attempt++) {
      const token = await this.accessToken({ forceRefresh: attempt > 0 });
      const response = await fetch(path, {
        method,
        headers: {
          Accept: "application/json",
          Authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (response.status === 401 && attempt === 0) continue;
      const data = await response.json().catch(() => null);
      if (!response.ok) throw new ApiError(response.status, data && data.detail, data);
      return data;
    }
  }

  _load() {
    try {
      const tokens = JSON.parse(this.storage.getItem(STORAGE_KEY));
      return tokens && tokens.access && tokens.refresh ? tokens : null;
    } catch {
      return null;
    }
  }

  _save(tokens) {
    this.tokens = tokens;
    this.storage.setItem(STORAGE_KEY, JSON.stringify(tokens));
  }
}
