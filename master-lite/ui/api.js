// The master's API: every call carries the token in a header (never in a URL);
// collections follow the master's long-poll watches, one watch per collection.

const KEY = 'wasmlet.token';

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, reason, message) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

/** Fired on `window` when the master refuses the token: the page asks for another. */
export const SIGNED_OUT = 'wasmlet-signed-out';

/** A request to `/api/v1{path}`; the answer's `Response`, or an ApiError. */
export async function request(method, path, { body, signal, token = session.token } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: 'no-store',
    credentials: 'omit',
    referrerPolicy: 'no-referrer',
  });
  if (response.status === 401 && token === session.token) {
    session.clear();
    window.dispatchEvent(new Event(SIGNED_OUT));
  }
  if (!response.ok && response.status !== 304) {
    let reason = String(response.status);
    let message = response.statusText;
    try {
      const answer = await response.json();
      reason = answer.reason || reason;
      message = answer.message || message;
    } catch { /* not JSON */ }
    throw new ApiError(response.status, reason, message);
  }
  return response;
}

/** The JSON answer of a request. */
export async function call(method, path, options) {
  const response = await request(method, path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** Whether the watches reach the master: listeners get `true` or `false`. */
export const connection = new EventTarget();

/**
 * A collection of the API (`nodes`, `workloads`, `instances`, `events`),
 * listed once and then followed with `?watch=true&since=REV`: each change
 * of the collection answers the open watch with the whole new list.
 * Watched only while a page listens to it.
 */
class Collection {
  constructor(name) {
    this.name = name;
    this.items = null;
    this.revision = 0;
    this.listeners = new Set();
    this.stop = null;
  }

  /** Calls `listener(items)` now (if listed) and on every change; returns the unsubscribe. */
  subscribe(listener) {
    this.listeners.add(listener);
    if (this.items) listener(this.items);
    if (!this.stop) this.follow();
    return () => {
      this.listeners.delete(listener);
      if (!this.listeners.size && this.stop) {
        this.stop.abort();
        this.stop = null;
      }
    };
  }

  async follow() {
    const stop = new AbortController();
    this.stop = stop;
    let backoff = 500;
    while (!stop.signal.aborted) {
      const query = this.items ? `?watch=true&since=${this.revision}&timeoutSeconds=30` : '';
      try {
        const response = await request('GET', `/${this.name}${query}`, { signal: stop.signal });
        connection.dispatchEvent(new CustomEvent('state', { detail: true }));
        backoff = 500;
        if (response.status === 304) continue;
        const list = await response.json();
        this.items = list.items;
        this.revision = list.revision;
        for (const listener of this.listeners) listener(this.items);
      } catch (error) {
        if (stop.signal.aborted) break;
        if (error instanceof ApiError && error.status === 410) {
          this.items = null; // the store was replaced: list again
          continue;
        }
        if (error instanceof ApiError && error.status === 401) break;
        connection.dispatchEvent(new CustomEvent('state', { detail: false }));
        await sleep(backoff, stop.signal);
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  /** Forgets what was listed (on sign-out). */
  reset() {
    if (this.stop) this.stop.abort();
    this.stop = null;
    this.items = null;
    this.revision = 0;
    this.listeners.clear();
  }
}

export const collections = {
  nodes: new Collection('nodes'),
  workloads: new Collection('workloads'),
  instances: new Collection('instances'),
  events: new Collection('events'),
};

/**
 * Calls `render({nodes, workloads, …})` once every named collection is
 * listed, and again on each change of any; returns the unsubscribe.
 */
export function follow(names, render) {
  const state = {};
  const unsubscribes = names.map((name) => collections[name].subscribe((items) => {
    state[name] = items;
    if (names.every((n) => state[n])) render(state);
  }));
  return () => unsubscribes.forEach((u) => u());
}
