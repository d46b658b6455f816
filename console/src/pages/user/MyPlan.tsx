// Subscriber: my plan (status, expiry, traffic used of the allowance) and my
// traffic over the last 24 hours and 30 days.

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, Subscription, User } from '../../api/types';
import { Async, Empty, Link, Page, Table } from '../../ui/components';
import { day } from '../../ui/format';
import { useNow, usePoll, useQuery } from '../../ui/hooks';
import { UsageCharts } from '../../ui/usage';
import { SubscriptionStatusBadge } from '../../ui/badges';
import { currentSubscription, Expiry, TrafficBar } from '../../ui/subscription';

type MySub = Subscription & { plan: NonNullable<Subscription['plan']> | null };

export function MyPlan(props: { userId: string }) {
  const now = useNow(30_000);
  const q = useQuery(
    (signal) =>
      gql<{ me: User; subscriptions: Connection<MySub> }>(doc.MY_PLAN, { userId: props.userId, first: 100 }, signal),
    [props.userId],
  );
  usePoll(q.reload, 30_000);
  return (
    <Page title="My plan">
      <Async q={q}>
        {(d) => {
          const sub = currentSubscription(d.subscriptions.nodes);
          if (!sub) {
            return (
              <Empty>
                You have no plan yet. Ask the operator of this service to grant you one; then add your
                devices.
              </Empty>
            );
          }
          const past = d.subscriptions.nodes.filter((s) => s.id !== sub.id);
          return (
            <>
              <section class="card plan-card" aria-labelledby="plan-name">
                <div class="plan-head">
                  <h2 id="plan-name">{sub.plan?.name ?? 'Plan'}</h2>
                  <SubscriptionStatusBadge status={sub.status} />
                </div>
                <dl class="facts">
                  <dt>Expires</dt>
                  <dd>
                    <Expiry at={sub.expiresAt} now={now} />
                  </dd>
                  <dt>Traffic</dt>
                  <dd>
                    <TrafficBar used={sub.trafficUsedBytes} limit={sub.trafficLimitBytes} />
                  </dd>
                  <dt>Period</dt>
                  <dd>
                    since {day(sub.periodStart)}
                    {sub.plan?.resetPeriod === 'MONTHLY' ? ', starts over every 30 days' : ''}
                  </dd>
                  <dt>Devices</dt>
                  <dd>
                    up to {sub.deviceLimit} · <Link to="/my/devices">manage devices</Link>
                  </dd>
                </dl>
              </section>
              {past.length > 0 && (
                <section class="card">
                  <h2>Earlier plans</h2>
                  <Table label="Earlier plans" head={['Plan', 'Status', 'From', 'Until']}>
                    {past.map((s) => (
                      <tr key={s.id}>
                        <td>{s.plan?.name ?? '—'}</td>
                        <td>
                          <SubscriptionStatusBadge status={s.status} />
                        </td>
                        <td>{day(s.startsAt)}</td>
                        <td>{day(s.expiresAt)}</td>
                      </tr>
                    ))}
                  </Table>
                </section>
              )}
            </>
          );
        }}
      </Async>
      <section class="card" aria-labelledby="usage-title">
        <h2 id="usage-title">My traffic</h2>
        <UsageCharts userId={props.userId} />
      </section>
    </Page>
  );
}
