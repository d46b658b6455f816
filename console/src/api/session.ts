// The signed-in session: log in, sign up, refresh, log out.
//
// The access JWT lives in memory only. The single-use refresh token is kept
// in this tab's sessionStorage, so a reload keeps the session and closing the
// tab ends it; neither ever goes into a URL or a log. The access token is
// refreshed a minute before it expires (sooner for short-lived tokens), and
// once more when the server says UNAUTHENTICATED. When the server cannot be
// reached or throttles the exchange (LIMIT_EXCEEDED, retryAfter), the session
// is kept and the exchange tried again later; when the server refuses the
// token the session ends cleanly and the console shows the sign-in page with
// the reason. Tabs holding the same session exchange its token one at a time
// and pass the new tokens on (`tabs.ts`).

import { ApiError } from './errors';
import { expiresAt } from './jwt';
import { Store } from './store';
import * as tabs from './tabs';
import { post } from './transport';
import type { User } from './types';

const REFRESH_KEY = 'httvps.console.refresh';
/** Refresh this long before the access token expires (at most a fifth of its life). */
const REFRESH_AHEAD_MS = 60_000;
/** Retry after a server that cannot be reached, or a throttle that says no more. */
const RETRY_MS = 10_000;
/** Longest pause a throttle's retryAfter is followed for. */
const MAX_PAUSE_MS = 5 * 60_000;

export type SessionState =
  | { status: 'loading' }
  | { status: 'signed-out'; reason?: string }
  | { status: 'signed-in'; user: User };

/** The current session, watched by the shell. */
export const session = new Store<SessionState>({ status: 'loading' });

interface Tokens {
  access: string;
  refresh: string;
  /** Milliseconds since the epoch. */
  expires: number;
}

let tokens: Tokens | null = null;
let refreshing: Promise<boolean> | null = null;
let timer: ReturnType<typeof setTimeout> | undefined;
/** A throttled exchange: no other attempt before `until` (ms since the epoch). */
let paused: { until: number; error: ApiError } | null = null;

const USER_FIELDS = 'id email role status createdAt';
const AUTH_FIELDS = `accessToken refreshToken user { ${USER_FIELDS} }`;

interface AuthPayload {
  accessToken: string;
  refreshToken: string;
  user: User;
}

function readStored(): string | null {
  try {
    return sessionStorage.getItem(REFRESH_KEY);
  } catch {
    return null;
  }
}

function store(refresh: string | null): void {
  try {
    if (refresh) sessionStorage.setItem(REFRESH_KEY, refresh);
    else sessionStorage.removeItem(REFRESH_KEY);
  } catch {
    // Storage refused (private mode): the session lasts until the page closes.
  }
}

/** This tab's refresh token, in memory or (before the first exchange) stored. */
function held(): string | null {
  return tokens?.refresh ?? readStored();
}

/** Exchanges the refresh token after `ms`. */
function refreshIn(ms: number): void {
  clearTimeout(timer);
  timer = setTimeout(() => {
    paused = null;
    refresh().catch(() => undefined);
  }, ms);
}

function adopt(p: AuthPayload): void {
  const now = Date.now();
  const exp = expiresAt(p.accessToken) ?? now + 5 * 60_000;
  tokens = { access: p.accessToken, refresh: p.refreshToken, expires: exp };
  store(p.refreshToken);
  paused = null;
  const life = exp - now;
  refreshIn(Math.max(5_000, life - Math.min(REFRESH_AHEAD_MS, life / 5)));
  const current = session.get();
  if (
    current.status !== 'signed-in' ||
    JSON.stringify(current.user) !== JSON.stringify(p.user)
  ) {
    session.set({ status: 'signed-in', user: p.user });
  }
}

/** Ends the session locally (the server side is `logout`). */
export function end(reason?: string): void {
  clearTimeout(timer);
  tokens = null;
  paused = null;
  store(null);
  tabs.forget();
  session.set({ status: 'signed-out', reason });
}

/**
 * How long to wait before trying again after a failed exchange that leaves
 * the token usable; null when the server refused the token.
 */
function retryDelay(e: unknown): number | null {
  if (!(e instanceof ApiError)) return null;
  if (e.code === 'NETWORK' || e.code === 'UNAVAILABLE') return RETRY_MS;
  if (e.code === 'LIMIT_EXCEEDED') {
    // Throttled before the token was looked at: wait as long as the server
    // says (within bounds), spread a little so tabs do not come back at once.
    const ms = e.retryAfter !== undefined ? e.retryAfter * 1000 : RETRY_MS;
    return Math.min(MAX_PAUSE_MS, Math.max(1_000, ms)) + Math.random() * 1_000;
  }
  return null;
}

/** The exchange itself, while no other tab makes one. */
async function exchange(token: string): Promise<boolean> {
  // Another tab spent this token while this one waited, and this tab took
  // the tokens it announced.
  if (held() !== token) return held() !== null;
  const spent = await tabs.fingerprint(token);
  if (await tabs.spentElsewhere(spent, () => held() !== token)) return held() !== null;
  const data = await post<{ refreshToken: AuthPayload }>(
    `mutation Refresh($token: String!) { refreshToken(token: $token) { ${AUTH_FIELDS} } }`,
    { token },
    null,
  );
  adopt(data.refreshToken);
  await tabs.announce({ spent, ...data.refreshToken });
  return true;
}

/** Exchanges the refresh token for new tokens, once at a time. */
export function refresh(): Promise<boolean> {
  if (refreshing) return refreshing;
  const token = held();
  if (!token) return Promise.resolve(false);
  // Throttled a moment ago: nothing is sent before the scheduled retry.
  if (paused && Date.now() < paused.until) return Promise.reject(paused.error);
  refreshing = (async () => {
    try {
      return await tabs.exclusively(() => exchange(token));
    } catch (e) {
      const wait = retryDelay(e);
      if (wait === null) {
        end('Your session ended. Sign in again.');
        return false;
      }
      // Keep the session; try again later.
      if (e instanceof ApiError && e.code === 'LIMIT_EXCEEDED') paused = { until: Date.now() + wait, error: e };
      refreshIn(wait);
      throw e;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// Tokens another tab got for this tab's spent token, and this tab's tokens
// for a tab that still holds a token this one spent.
tabs.listen({
  adopt: (r) => {
    const mine = held();
    if (!mine) return;
    void tabs.fingerprint(mine).then((f) => {
      if (f === r.spent && held() === mine) adopt(r);
    });
  },
  current: () => {
    const s = session.get();
    return tokens && s.status === 'signed-in'
      ? { accessToken: tokens.access, refreshToken: tokens.refresh, user: s.user }
      : null;
  },
});

/** Picks up the session kept by this tab, if any (at start-up). */
export async function restore(): Promise<void> {
  if (!readStored()) {
    session.set({ status: 'signed-out' });
    return;
  }
  try {
    await refresh();
  } catch (e) {
    // The token is kept and tried again shortly: a success signs in.
    session.set({
      status: 'signed-out',
      reason:
        e instanceof ApiError && e.code === 'LIMIT_EXCEEDED'
          ? 'Too many attempts just now: the console tries again in a moment.'
          : 'The server cannot be reached. Reload the page to try again.',
    });
  }
}

/** The access token to send now (refreshed first when about to expire). */
export async function accessToken(): Promise<string | null> {
  if (!tokens) return null;
  if (tokens.expires - Date.now() < 10_000) {
    try {
      await refresh();
    } catch (e) {
      // Not renewed for now (unreachable, throttled): the current token while it lasts.
      if (!tokens || tokens.expires <= Date.now()) throw e;
    }
  }
  return tokens?.access ?? null;
}

export async function login(email: string, password: string): Promise<void> {
  const data = await post<{ login: AuthPayload }>(
    `mutation Login($email: String!, $password: String!) { login(email: $email, password: $password) { ${AUTH_FIELDS} } }`,
    { email, password },
    null,
  );
  adopt(data.login);
}

export async function signUp(email: string, password: string): Promise<void> {
  await post<{ signUp: User }>(
    `mutation SignUp($email: String!, $password: String!) { signUp(email: $email, password: $password) { id } }`,
    { email, password },
    null,
  );
  await login(email, password);
}

/** Signs out everywhere (the server revokes every token of the account). */
export async function logout(): Promise<void> {
  await signOutWith('mutation Logout { logout }');
}

/**
 * Signs out this browser only: the server ends this sign-in's tokens; the
 * account's other browsers and apps stay signed in.
 */
export async function signOut(): Promise<void> {
  await signOutWith('mutation SignOut { logout(everywhere: false) }');
}

async function signOutWith(mutation: string): Promise<void> {
  const token = tokens?.access ?? null;
  // Forgotten here first, so a reload while the server answers stays signed out.
  store(null);
  try {
    if (token) await post<{ logout: boolean }>(mutation, undefined, token);
  } catch {
    // Signed out locally all the same.
  }
  end('You are signed out.');
}

/** Changes the password, then signs in again (older tokens stop working). */
export async function changePassword(current: string, next: string): Promise<void> {
  const state = session.get();
  if (state.status !== 'signed-in') throw new ApiError('SESSION_ENDED', 'signed out');
  const token = await accessToken();
  await post<{ changePassword: boolean }>(
    'mutation ChangePassword($current: String!, $next: String!) { changePassword(currentPassword: $current, newPassword: $next) }',
    { current, next },
    token,
  );
  await login(state.user.email, next);
}
