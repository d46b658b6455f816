// Live operations over graphql-transport-ws at /graphql/ws. One socket for
// the whole console, opened when the first live operation starts, with the
// access token in `connection_init` (never in the URL). The socket
// reconnects with backoff and a fresh token. When the server ends an
// operation or refuses the socket's credential (close 4403: its token
// expired or was revoked, the account was disabled), the operation starts
// over on a new socket after a refresh, or the session ends.
// Either way the page is told, so it re-reads what it shows: events sent
// while nothing listened are gone.

import { createClient, type Client } from 'graphql-ws';

import { ApiError, fromGraphQL } from './errors';
import { accessToken, refresh, session } from './session';
import { Store } from './store';

export type LiveStatus = 'idle' | 'connecting' | 'live' | 'offline';

/** State of the socket, for the "live" indicator. */
export const liveStatus = new Store<LiveStatus>('idle');

let client: Client | null = null;
/** Live operations running now: a socket closed with none is idle, not lost. */
let running = 0;
let connectedOnce = false;
const reconnectListeners = new Set<() => void>();

function wsUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/graphql/ws`;
}

function backoff(attempt: number): number {
  return Math.min(10_000, 500 * 2 ** attempt) * (0.75 + Math.random() / 2);
}

function getClient(): Client {
  if (client) return client;
  connectedOnce = false;
  const c = createClient({
    url: wsUrl(),
    lazy: true,
    lazyCloseTimeout: 3_000,
    keepAlive: 20_000,
    retryAttempts: Number.POSITIVE_INFINITY,
    // 4403: the server refused the socket's credential (revoked, expired,
    // account disabled): not retried as it is; the operation refreshes.
    shouldRetry: (e) => session.get().status === 'signed-in' && !(isCloseEvent(e) && e.code === 4403),
    retryWait: (retries) => new Promise((resolve) => setTimeout(resolve, backoff(retries))),
    connectionParams: async () => {
      const token = await accessToken();
      return token ? { Authorization: `Bearer ${token}` } : {};
    },
    on: {
      connecting: () => liveStatus.set('connecting'),
      connected: () => {
        liveStatus.set('live');
        // A reconnection after a drop: everyone re-reads.
        if (connectedOnce) for (const l of [...reconnectListeners]) l();
        connectedOnce = true;
      },
      closed: () => {
        if (client !== c) return;
        if (running === 0) {
          liveStatus.set('idle');
          connectedOnce = false;
        } else {
          liveStatus.set(connectedOnce ? 'offline' : 'connecting');
        }
      },
    },
  });
  client = c;
  return c;
}

/** Closes the socket; the next operation opens a new one. */
function dispose(which: Client | null = client): void {
  if (!which || which !== client) return;
  client = null;
  liveStatus.set(running > 0 ? 'connecting' : 'idle');
  void which.dispose();
}

session.subscribe((s) => {
  if (s.status !== 'signed-in') dispose();
});

/** Calls `listener` after the socket came back from an interruption. */
export function onReconnect(listener: () => void): () => void {
  reconnectListeners.add(listener);
  return () => reconnectListeners.delete(listener);
}

function isCloseEvent(e: unknown): e is { code: number; reason: string } {
  return typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'number';
}

/**
 * Starts one live operation; returns the function that stops it.
 * `onRestart` runs when the operation had to start over (the page should
 * re-read its data); `onError` gets errors of the operation itself (a
 * FORBIDDEN, say), after which it is over.
 */
export function subscribe<T>(
  query: string,
  variables: Record<string, unknown>,
  onData: (data: T) => void,
  handlers: { onError?: (err: ApiError) => void; onRestart?: () => void } = {},
): () => void {
  let stopped = false;
  let stopCurrent: (() => void) | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let attempt = 0;

  const again = async (on: Client, credential: boolean) => {
    stopCurrent = null;
    if (stopped || session.get().status !== 'signed-in') return;
    if (credential) {
      // The server refused the socket's token: get a new one (or end the session).
      try {
        if (!(await refresh())) return;
      } catch {
        // Unreachable or throttled for now (the session is kept): the retry
        // below tries again, and the session retries the exchange itself.
      }
    }
    dispose(on);
    timer = setTimeout(() => {
      if (stopped) return;
      start();
      handlers.onRestart?.();
    }, backoff(attempt++));
  };

  const start = () => {
    const on = getClient();
    stopCurrent = on.subscribe<T>(
      { query, variables },
      {
        next: (msg) => {
          attempt = 0;
          if (msg.errors?.length) {
            const e = fromGraphQL(msg.errors);
            // UNAVAILABLE: the server may have missed events (its database
            // link went and came back) and ends the operation; it starts
            // over (complete follows) and the page re-reads, as after a
            // reconnection, with nothing to show the user.
            if (e.code !== 'UNAVAILABLE') handlers.onError?.(e);
          } else if (msg.data) onData(msg.data as T);
        },
        error: (err) => {
          if (Array.isArray(err)) {
            handlers.onError?.(fromGraphQL(err));
            return;
          }
          // A close the client does not retry: 4403 (1002 from older
          // servers) is how the server refuses the socket's credential, in
          // connection_init or when it stops being valid.
          void again(on, isCloseEvent(err) && (err.code === 4403 || err.code === 1002));
        },
        // The server ended the operation (its credential ran out, say).
        complete: () => void again(on, false),
      },
    );
  };

  running++;
  start();
  return () => {
    if (stopped) return;
    stopped = true;
    running--;
    clearTimeout(timer);
    stopCurrent?.();
  };
}
