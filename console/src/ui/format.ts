// Formatting of bytes, money and times for display.

const UNITS = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];

/** 1234567 -> "1.2 MB" (decimal units, as operators and plans use). */
export function bytes(value: string | number | bigint | null | undefined): string {
  if (value == null) return '—';
  let n = Number(value);
  if (!Number.isFinite(n)) return String(value);
  let u = 0;
  while (n >= 1000 && u < UNITS.length - 1) {
    n /= 1000;
    u++;
  }
  const digits = u === 0 || n >= 100 ? 0 : n >= 10 ? 1 : 2;
  return `${n.toFixed(digits)} ${UNITS[u]}`;
}

/** Cents of a currency -> "$4.99"-like text. */
export function money(cents: string | number, currency: string): string {
  const amount = Number(cents) / 100;
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(amount);
  } catch {
    return `${amount.toFixed(2)} ${currency}`;
  }
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric',
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
});
const dateOnly = new Intl.DateTimeFormat(undefined, {
  year: 'numeric',
  month: 'short',
  day: 'numeric',
});

export function when(iso: string | null | undefined): string {
  return iso ? dateTime.format(new Date(iso)) : '—';
}

export function day(iso: string | null | undefined): string {
  return iso ? dateOnly.format(new Date(iso)) : '—';
}

/** "12 s ago", "3 min ago", "in 4 days" relative to `now` (ms). */
export function ago(iso: string | null | undefined, now: number): string {
  if (!iso) return 'never';
  const diff = Math.round((now - Date.parse(iso)) / 1000);
  const future = diff < 0;
  const s = Math.abs(diff);
  const text =
    s < 60
      ? `${s} s`
      : s < 3600
        ? `${Math.floor(s / 60)} min`
        : s < 86_400
          ? `${Math.floor(s / 3600)} h`
          : `${Math.floor(s / 86_400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

/** A short id for tables: the first 8 hex digits. */
export function shortId(id: string | null | undefined): string {
  return id ? id.slice(0, 8) : '—';
}
