// A small history router for the console's pages under /console/. Links are
// real <a href>s (open in a new tab, keyboard, middle click); plain clicks
// are handled here without a reload. No token or secret ever goes into a
// path or a query string.

import { useEffect, useState } from 'preact/hooks';

export const BASE = '/console';

function current(): string {
  const p = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : '/';
  return p === '' ? '/' : p;
}

const listeners = new Set<() => void>();
addEventListener('popstate', () => listeners.forEach((l) => l()));

/** Goes to a console path such as `/users/…`. */
export function navigate(path: string, replace = false): void {
  const url = BASE + path;
  if (url === location.pathname + location.search) return;
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  listeners.forEach((l) => l());
  scrollTo(0, 0);
}

/** The console path (after /console), with its query string. */
export function useRoute(): { path: string; query: URLSearchParams } {
  const [, setTick] = useState(0);
  useEffect(() => {
    const l = () => setTick((t) => t + 1);
    listeners.add(l);
    return () => listeners.delete(l);
  }, []);
  return { path: current(), query: new URLSearchParams(location.search) };
}

/**
 * Matches `/users/:id`-style patterns; returns the parameters or null. A
 * parameter that is not valid percent-encoding (`%ZZ`) matches nothing, so
 * the page is "Not found".
 */
export function match(pattern: string, path: string): Record<string, string> | null {
  const a = pattern.split('/').filter(Boolean);
  const b = path.split('/').filter(Boolean);
  if (a.length !== b.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < a.length; i++) {
    const p = a[i]!;
    const v = b[i]!;
    if (p.startsWith(':')) {
      try {
        params[p.slice(1)] = decodeURIComponent(v);
      } catch {
        return null;
      }
    } else if (p !== v) return null;
  }
  return params;
}

/** Click handler for console links: same-tab left clicks stay in the app. */
export function onLinkClick(e: MouseEvent, path: string): void {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) {
    return;
  }
  e.preventDefault();
  navigate(path);
}
