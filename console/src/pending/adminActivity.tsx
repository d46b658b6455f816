// Live admin activity (proposed: Live.sessionEvents, Live.quotaEvents): a
// feed of sessions opening and closing and of subscriptions reaching their
// allowance. Renders nothing until the server offers the subscriptions.

import { useState } from 'preact/hooks';

import type { BigIntString, DateTime, UUID } from '../api/types';
import { Badge, Empty } from '../ui/components';
import { bytes, when } from '../ui/format';
import { useLive } from '../ui/hooks';
import { useCapability } from './useCapability';

interface SessionEvent {
  kind: 'OPENED' | 'CLOSED';
  sessionId: UUID;
  userEmail: string;
  region: string;
  endReason: string | null;
  bytesUp: BigIntString;
  bytesDown: BigIntString;
  at: DateTime;
}

interface QuotaEvent {
  kind: 'QUOTA_REACHED' | 'PERIOD_RESET' | 'EXPIRED';
  subscriptionId: UUID;
  userEmail: string;
  trafficLimitBytes: BigIntString | null;
  trafficUsedBytes: BigIntString;
  at: DateTime;
}

const SESSION_EVENTS = `subscription SessionEvents { sessionEvents {
  kind sessionId userEmail region endReason bytesUp bytesDown at } }`;
const QUOTA_EVENTS = `subscription QuotaEvents { quotaEvents {
  kind subscriptionId userEmail trafficLimitBytes trafficUsedBytes at } }`;

type Item = { key: string; at: DateTime; text: string; tone: 'ok' | 'warn' | 'bad' | 'muted' | 'info'; label: string };

const MAX_ITEMS = 50;

/** The feed; `onSessionChange` lets the overview refresh its counts. */
export function AdminActivity(props: { onSessionChange?: () => void }) {
  const sessionsOk = useCapability('sessionEvents');
  const quotaOk = useCapability('quotaEvents');
  const [items, setItems] = useState<Item[]>([]);
  const push = (item: Item) => setItems((old) => [item, ...old].slice(0, MAX_ITEMS));

  useLive<{ sessionEvents: SessionEvent }>(
    SESSION_EVENTS,
    {},
    ({ sessionEvents: e }) => {
      push({
        key: `${e.sessionId}-${e.kind}`,
        at: e.at,
        label: e.kind === 'OPENED' ? 'opened' : 'closed',
        tone: e.kind === 'OPENED' ? 'ok' : 'muted',
        text:
          e.kind === 'OPENED'
            ? `${e.userEmail}: session in ${e.region}`
            : `${e.userEmail}: session in ${e.region} ended (${e.endReason ?? 'closed'}), ${bytes(
                BigInt(e.bytesDown) + BigInt(e.bytesUp),
              )}`,
      });
      props.onSessionChange?.();
    },
    { enabled: sessionsOk === true },
  );
  useLive<{ quotaEvents: QuotaEvent }>(
    QUOTA_EVENTS,
    {},
    ({ quotaEvents: e }) =>
      push({
        key: `${e.subscriptionId}-${e.kind}-${e.at}`,
        at: e.at,
        label: e.kind === 'QUOTA_REACHED' ? 'quota' : e.kind === 'EXPIRED' ? 'expired' : 'reset',
        tone: e.kind === 'PERIOD_RESET' ? 'info' : 'warn',
        text: `${e.userEmail}: ${bytes(e.trafficUsedBytes)} of ${bytes(e.trafficLimitBytes)}`,
      }),
    { enabled: quotaOk === true },
  );

  if (!sessionsOk && !quotaOk) return null;
  return (
    <section class="card" aria-labelledby="activity-title">
      <h2 id="activity-title">Live activity</h2>
      {items.length === 0 ? (
        <Empty>Nothing yet: sessions and quota events appear here as they happen.</Empty>
      ) : (
        <ul class="feed" aria-live="polite">
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
