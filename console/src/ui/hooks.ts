// Hooks shared by the pages: watched stores, queries with loading and error
// states, a ticking clock, cursor paging and live operations.

import { useCallback, useEffect, useRef, useState } from 'preact/hooks';

import { subscribe, onReconnect } from '../api/live';
import type { ApiError } from '../api/errors';
import type { Store } from '../api/store';

export function useStore<T>(store: Store<T>): T {
  const [value, setValue] = useState(store.get());
  useEffect(() => {
    setValue(store.get());
    return store.subscribe(setValue);
  }, [store]);
  return value;
}

export interface QueryState<T> {
  data: T | undefined;
  error: unknown;
  /** True until the first answer (or error). */
  loading: boolean;
  reload: () => void;
  /** Replaces the data locally (after a mutation or a live event). */
  setData: (update: (old: T | undefined) => T | undefined) => void;
}

/**
 * Runs `load` now and whenever `deps` change; keeps the last data while a
 * reload runs, and drops answers of superseded runs.
 */
export function useQuery<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): QueryState<T> {
  const [data, setDataState] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    const ctl = new AbortController();
    loadRef
      .current(ctl.signal)
      .then((d) => {
        if (ctl.signal.aborted) return;
        setDataState(() => d);
        setError(null);
        setLoading(false);
      })
      .catch((e: unknown) => {
        if (ctl.signal.aborted) return;
        setError(e);
        setLoading(false);
      });
    return () => ctl.abort();
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  const setData = useCallback(
    (update: (old: T | undefined) => T | undefined) => setDataState((old) => update(old)),
    [],
  );
  return { data, error, loading, reload, setData };
}

/** The time now, re-rendering every `everyMs`. */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const id = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(id);
  }, [everyMs]);
  return now;
}

/** Calls `fn` every `everyMs` while the page is visible, and on focus. */
export function usePoll(fn: () => void, everyMs: number): void {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  useEffect(() => {
    const run = () => {
      if (document.visibilityState === 'visible') fnRef.current();
    };
    const id = setInterval(run, everyMs);
    addEventListener('focus', run);
    document.addEventListener('visibilitychange', run);
    return () => {
      clearInterval(id);
      removeEventListener('focus', run);
      document.removeEventListener('visibilitychange', run);
    };
  }, [everyMs]);
}

/** Forward-only cursor paging with a stack for "previous". */
export interface Pager {
  after: string | null;
  page: number;
  next: (endCursor: string | null) => void;
  previous: () => void;
  reset: () => void;
}

export function usePager(): Pager {
  const [stack, setStack] = useState<(string | null)[]>([null]);
  return {
    after: stack[stack.length - 1] ?? null,
    page: stack.length,
    next: (cursor) => cursor && setStack((s) => [...s, cursor]),
    previous: () => setStack((s) => (s.length > 1 ? s.slice(0, -1) : s)),
    reset: () => setStack([null]),
  };
}

/**
 * Keeps one live operation running while the component is mounted (and
 * `enabled`); `onReconnect` runs after the socket recovers from a drop.
 */
export function useLive<T>(
  query: string,
  variables: Record<string, unknown>,
  onData: (data: T) => void,
  opts: { enabled?: boolean; onReconnect?: () => void; onError?: (e: ApiError) => void } = {},
): void {
  const handlers = useRef({ onData, ...opts });
  handlers.current = { onData, ...opts };
  const key = JSON.stringify(variables);
  const enabled = opts.enabled ?? true;
  useEffect(() => {
    if (!enabled) return;
    const stop = subscribe<T>(query, JSON.parse(key) as Record<string, unknown>, (d) => handlers.current.onData(d), {
      onError: (e) => handlers.current.onError?.(e),
      onRestart: () => handlers.current.onReconnect?.(),
    });
    const off = onReconnect(() => handlers.current.onReconnect?.());
    return () => {
      off();
      stop();
    };
  }, [query, key, enabled]);
}
