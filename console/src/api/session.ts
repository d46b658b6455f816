// The signed-in session: log in, sign up, refresh, log out.
//
// The access JWT lives in memory only. The single-use refresh token is kept
// in this tab's sessionStorage, so a reload keeps the session and closing the
// tab ends it; neither ever goes into a URL or a log. The access token is
// refreshed a minute before it expires (sooner for short-lived tokens), and
// once more when the server says UNAUTHENTICATED; when refreshing fails the
// session ends cleanly and the console shows the sign-in page with the reason.

import { ApiError } from './errors';
import { expiresAt } from './jwt';
import { Store } from './store';
import { post } from './transport';
import type { User } from './types';

const REFRESH_KEY = 'httvps.console.refresh';
/** Refresh this long before the access token expires (at most a fifth of its life). */
const REFRESH_AHEAD_MS = 60_000;

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

function adopt(p: AuthPayload): void {
  const now = Date.now();
  const exp = expiresAt(p.accessToken) ?? now + 5 * 60_000;
  tokens = { access: p.accessToken, refresh: p.refreshToken, expires: exp };
  store(p.refreshToken);
  clearTimeout(timer);
  const life = exp - now;
  const wait = Math.max(5_000, life - Math.min(REFRESH_AHEAD_MS, life / 5));
  timer = setTimeout(() => refresh().catch(() => undefined), wait);
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
  store(null);
  session.set({ status: 'signed-out', reason });
}

/** Exchanges the refresh token for new tokens, once at a time. */
export function refresh(): Promise<boolean> {
  if (refreshing) return refreshing;
  const token = tokens?.refresh ?? readStored();
  if (!token) return Promise.resolve(false);
  refreshing = (async () => {
    try {
      const data = await post<{ refreshToken: AuthPayload }>(
        `mutation Refresh($token: String!) { refreshToken(token: $token) { ${AUTH_FIELDS} } }`,
        { token },
        null,
      );
      adopt(data.refreshToken);
      return true;
    } catch (e) {
      if (e instanceof ApiError && (e.code === 'NETWORK' || e.code === 'UNAVAILABLE')) {
        // Keep the session; try again shortly.
        clearTimeout(timer);
        timer = setTimeout(() => refresh().catch(() => undefined), 10_000);
        throw e;
      }
      end('Your session ended. Sign in again.');
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Picks up the session kept by this tab, if any (at start-up). */
export async function restore(): Promise<void> {
  if (!readStored()) {
    session.set({ status: 'signed-out' });
    return;
  }
  try {
    await refresh();
  } catch {
    session.set({
      status: 'signed-out',
      reason: 'The server cannot be reached. Reload the page to try again.',
    });
  }
}

/** The access token to send now (refreshed first when about to expire). */
export async function accessToken(): Promise<string | null> {
  if (!tokens) return null;
  if (tokens.expires - Date.now() < 10_000) {
    await refresh();
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
  const token = tokens?.access ?? null;
  // Forgotten here first, so a reload while the server answers stays signed out.
  store(null);
  try {
    if (token) await post<{ logout: boolean }>('mutation Logout { logout }', undefined, token);
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
