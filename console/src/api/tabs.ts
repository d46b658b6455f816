// The console open in several tabs of one browser. Tabs can hold the same
// session: a duplicated tab starts with a copy of this tab's sessionStorage.
// Its refresh token is single-use, and presenting a spent one ends the session
// everywhere. So tabs exchange tokens one at a time (Web Locks). Each tab
// announces the tokens it got (BroadcastChannel, this origin's tabs only).
// A tab still holding the token another tab spent takes the new tokens
// instead of presenting the old one. While a tab is alive it holds a lock
// named after each token it spent, so a tab that is about to present a token
// can ask whether it was spent, and by a tab still there to answer.
// Tokens are named by their SHA-256, and never written to localStorage.
// A browser without these APIs works as before: each tab on its own.

import { ApiError } from './errors';
import type { User } from './types';

const LOCK = 'httvps.console.refresh';
const SPENT = 'httvps.console.spent.';
const CHANNEL = 'httvps.console.session';
/** Longest wait for another tab's exchange to finish. */
const LOCK_WAIT_MS = 20_000;
/** Longest wait for the tab that spent a token to say what replaced it. */
const ANSWER_WAIT_MS = 3_000;
/** Tokens a tab remembers having spent. */
const REMEMBERED = 8;

/** Tokens that replaced a spent one (named by its fingerprint). */
export interface Rotation {
  spent: string;
  accessToken: string;
  refreshToken: string;
  user: User;
}

type Message = ({ type: 'rotated' } & Rotation) | { type: 'ask'; spent: string };

const locks: LockManager | null =
  typeof navigator !== 'undefined' && typeof navigator.locks?.request === 'function' ? navigator.locks : null;

const channel: BroadcastChannel | null = (() => {
  try {
    return typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL) : null;
  } catch {
    return null;
  }
})();

/** Fingerprints of the tokens this tab spent, oldest first, with their locks. */
const spentHere: { spent: string; release: () => void }[] = [];

function send(m: Message): void {
  try {
    channel?.postMessage(m);
  } catch {
    // Closed channel: the other tabs find out on their own.
  }
}

function isRotation(data: object): data is { type: 'rotated' } & Rotation {
  const m = data as Record<string, unknown>;
  const u = m.user as Record<string, unknown> | null | undefined;
  return (
    typeof m.spent === 'string' &&
    typeof m.accessToken === 'string' &&
    typeof m.refreshToken === 'string' &&
    typeof u === 'object' &&
    u !== null &&
    typeof u.id === 'string' &&
    typeof u.email === 'string' &&
    typeof u.role === 'string' &&
    typeof u.status === 'string'
  );
}

/** The SHA-256 of a token in hex: how tabs name a token to each other. */
export async function fingerprint(token: string): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  // No SubtleCrypto outside secure contexts (and no Web Locks either).
  if (!subtle) return token;
  const digest = await subtle.digest('SHA-256', new TextEncoder().encode(token));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Listens to the other tabs: `adopt` gets tokens that replaced a spent one
 * (it checks that the spent one is this tab's); `current` gives this tab's
 * tokens, sent to a tab that asks about a token this one spent.
 */
export function listen(handlers: {
  adopt: (r: Rotation) => void;
  current: () => Omit<Rotation, 'spent'> | null;
}): void {
  channel?.addEventListener('message', (e: MessageEvent) => {
    const m = e.data as Record<string, unknown> | null;
    if (!m || typeof m !== 'object') return;
    if (m.type === 'rotated' && isRotation(m)) {
      handlers.adopt(m);
    } else if (m.type === 'ask' && typeof m.spent === 'string') {
      const spent = m.spent;
      const now = handlers.current();
      if (now && spentHere.some((s) => s.spent === spent)) send({ type: 'rotated', spent, ...now });
    }
  });
}

/**
 * Runs `fn` while no other tab exchanges a refresh token. Another tab's
 * exchange that takes too long is UNAVAILABLE (tried again later).
 */
export async function exclusively<T>(fn: () => Promise<T>): Promise<T> {
  if (!locks) return fn();
  const signal = typeof AbortSignal.timeout === 'function' ? AbortSignal.timeout(LOCK_WAIT_MS) : undefined;
  let ran = false;
  try {
    return await locks.request(LOCK, signal ? { signal } : {}, () => {
      ran = true;
      return fn();
    });
  } catch (e) {
    if (ran) throw e;
    if (signal?.aborted) throw new ApiError('UNAVAILABLE', 'the session is being renewed in another tab');
    // Locks refused here (an unusual context): on its own.
    return fn();
  }
}

/**
 * Whether a tab that is still open spent the token named `spent`; if so,
 * waits (boundedly) until `replaced` says that tab's answer was adopted.
 * Call while holding the lock of [`exclusively`].
 */
export async function spentElsewhere(spent: string, replaced: () => boolean): Promise<boolean> {
  if (!locks || !channel) return false;
  try {
    const state = await locks.query();
    if (!(state.held ?? []).some((l) => l.name === SPENT + spent)) return false;
  } catch {
    return false;
  }
  // Its announcement may still be on its way, or went out before this page
  // loaded: ask that tab for the tokens it holds now.
  send({ type: 'ask', spent });
  const deadline = Date.now() + ANSWER_WAIT_MS;
  while (!replaced() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (!replaced()) throw new ApiError('UNAVAILABLE', 'the session is being renewed in another tab');
  return true;
}

/**
 * Tells the other tabs what replaced the token named `r.spent`, and marks it
 * spent while this tab is open. Call while holding the lock of
 * [`exclusively`], before it is released.
 */
export async function announce(r: Rotation): Promise<void> {
  if (!channel) return;
  send({ type: 'rotated', ...r });
  let release: () => void = () => undefined;
  if (locks) {
    await new Promise<void>((marked) => {
      locks
        .request(SPENT + r.spent, { ifAvailable: true }, (lock) => {
          marked();
          return lock ? new Promise<void>((done) => (release = done)) : undefined;
        })
        .catch(() => marked());
    });
  }
  spentHere.push({ spent: r.spent, release });
  while (spentHere.length > REMEMBERED) spentHere.shift()!.release();
}

/** Forgets the tokens this tab spent (its session ended). */
export function forget(): void {
  for (const s of spentHere.splice(0)) s.release();
}
