// The overview's live activity feed (admin): sessions opening and closing
// (Live.sessionEvents) and subscriptions reaching their allowance, starting
// a new period or expiring (Live.quotaEvents), newest first.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import type { DateTime, QuotaEvent, SessionEvent } from '../../api/types';
import { Badge, Empty } from '../../ui/components';
import { bytes, when } from '../../ui/format';
import { useLive } from '../../ui/hooks';

type Tone = 'ok' | 'warn' | 'bad' | 'muted' | 'info';
interface Item {
  key: string;
  at: DateTime;
  label: string;
  tone: Tone;
  text: string;
}

/** How many events the feed keeps. */
const MAX_ITEMS = 50;

/** What a session event says in the feed. */
export function sessionItem(e: SessionEvent): Item {
  const where = e.region ? ` in ${e.region}` : '';
  if (e.kind === 'OPENED') {
    return { key: `${e.sessionId}-o`, at: e.at, label: 'opened', tone: 'ok', text: `${e.userEmail}: session${where}` };
  }
  const moved = bytes(BigInt(e.bytesDown) + BigInt(e.bytesUp));
  return {
    key: `${e.sessionId}-c`,
    at: e.at,
    label: 'closed',
    tone: 'muted',
    text: `${e.userEmail}: session${where} ended (${(e.endReason ?? 'closed').replace(/_/g, ' ')}), ${moved}`,
  };
}

const QUOTA_LABELS: Record<QuotaEvent['kind'], [string, Tone]> = {
  QUOTA_REACHED: ['quota reached', 'warn'],
  PERIOD_RESET: ['quota reset', 'info'],
  EXPIRED: ['expired', 'bad'],
};

/** What a quota event says in the feed. */
export function quotaItem(e: QuotaEvent): Item {
  const [label, tone] = QUOTA_LABELS[e.kind];
  const used =
    e.trafficLimitBytes === null
      ? `${bytes(e.trafficUsedBytes)} used`
      : `${bytes(e.trafficUsedBytes)} of ${bytes(e.trafficLimitBytes)}`;
  return { key: `${e.subscriptionId}-${e.kind}-${e.at}`, at: e.at, label, tone, text: `${e.userEmail}: ${used}` };
}

/** The feed; `onSessionChange` lets the overview refresh its counts. */
export function AdminActivity(props: { onSessionChange?: () => void }) {
  const [items, setItems] = useState<Item[]>([]);
  const push = (item: Item) =>
    setItems((old) => [item, ...old.filter((o) => o.key !== item.key)].slice(0, MAX_ITEMS));
  useLive<{ sessionEvents: SessionEvent }>(doc.SESSION_EVENTS, {}, ({ sessionEvents: e }) => {
    push(sessionItem(e));
    props.onSessionChange?.();
  });
  useLive<{ quotaEvents: QuotaEvent }>(doc.QUOTA_EVENTS, {}, ({ quotaEvents: e }) => push(quotaItem(e)));
  return (
    <section class="card" aria-labelledby="activity-title">
      <h2 id="activity-title">Live activity</h2>
      {items.length === 0 ? (
        <Empty>Nothing yet: sessions opening and closing and quota events appear here as they happen.</Empty>
      ) : (
        <ul class="feed" aria-live="polite" data-testid="activity-feed">
          {items.map((i) => (
            <li key={i.key}>
              <Badge tone={i.tone}>{i.label}</Badge> {i.text} <span class="muted">{when(i.at)}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
