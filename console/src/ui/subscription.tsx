// A subscription's state at a glance: status, expiry and the traffic bar.

import type { Subscription } from '../api/types';
import { ago, bytes, day } from './format';

/** Traffic used of the allowance, as a bar (an ARIA meter). */
export function TrafficBar(props: { used: string; limit: string | null }) {
  const used = Number(props.used);
  if (props.limit == null) {
    return (
      <div class="traffic">
        <span>{bytes(used)} used · unlimited</span>
      </div>
    );
  }
  const limit = Number(props.limit);
  // An allowance of 0 is spent from the start.
  const share = limit > 0 ? Math.min(1, used / limit) : 1;
  const tone = share >= 1 ? 'bad' : share >= 0.8 ? 'warn' : 'ok';
  return (
    <div class="traffic">
      <div
        class="bar"
        role="meter"
        aria-label="Traffic used"
        aria-valuemin={0}
        aria-valuemax={limit}
        aria-valuenow={Math.min(used, limit)}
        aria-valuetext={`${bytes(used)} of ${bytes(limit)}`}
      >
        <span class={`fill ${tone}`} style={{ width: `${(share * 100).toFixed(1)}%` }} />
      </div>
      <span>
        {bytes(used)} of {bytes(limit)} ({Math.round(share * 100)}%)
      </span>
    </div>
  );
}

export function Expiry(props: { at: string; now: number }) {
  return (
    <span title={props.at}>
      {day(props.at)} <span class="muted">({ago(props.at, props.now)})</span>
    </span>
  );
}

/** The subscription that applies now: the active one ending last, else the newest. */
export function currentSubscription<T extends Subscription>(list: T[]): T | undefined {
  const active = list.filter((s) => s.status === 'ACTIVE');
  const pool = active.length ? active : list;
  return [...pool].sort((a, b) => Date.parse(b.expiresAt) - Date.parse(a.expiresAt))[0];
}
