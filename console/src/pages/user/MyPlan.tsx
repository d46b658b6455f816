// Subscriber: my plan (status, expiry, traffic used of the allowance) and my
// traffic over the last 24 hours and 30 days.

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, CountedConnection, Subscription } from '../../api/types';
import { Async, Empty, Link, Page, PagerBar, Table } from '../../ui/components';
import { day } from '../../ui/format';
import { useNow, usePager, usePoll, useQuery } from '../../ui/hooks';
import { UsageCharts } from '../../ui/usage';
import { SubscriptionStatusBadge } from '../../ui/badges';
import { currentSubscription, Expiry, TrafficBar } from '../../ui/subscription';

type MySub = Subscription & { plan: NonNullable<Subscription['plan']> | null };

/** Earlier plans read per page. */
const PAGE_SIZE = 25;

export function MyPlan(props: { userId: string }) {
  const now = useNow(30_000);
  const pager = usePager();
  const q = useQuery(
    (signal) =>
      gql<{ current: Connection<MySub>; subscriptions: CountedConnection<MySub> }>(
        doc.USER_SUBSCRIPTIONS,
        { userId: props.userId, first: PAGE_SIZE, after: pager.after },
        signal,
      ),
    [props.userId, pager.after],
  );
  usePoll(q.reload, 30_000);
  return (
    <Page title="My plan">
      <Async q={q}>
        {(d) => {
          const history = d.subscriptions;
          // The one stored as active; else, with the whole history on hand,
          // the newest of it (ended, shown as such).
          const whole = pager.page === 1 && !history.pageInfo.hasNextPage;
          const sub = currentSubscription(d.current.nodes) ?? (whole ? currentSubscription(history.nodes) : undefined);
          if (!sub && history.totalCount === 0) {
            return (
              <Empty>
                You have no plan yet. Ask the operator of this service to grant you one; then add your
                devices.
              </Empty>
            );
          }
          const past = history.nodes.filter((s) => s.id !== sub?.id);
          return (
            <>
              {sub ? (
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
              ) : (
                <Empty>You have no plan in force. Ask the operator of this service to grant you one.</Empty>
              )}
              {(past.length > 0 || pager.page > 1) && (
                <section class="card">
                  <h2>Earlier plans</h2>
                  {!whole && <p class="muted">{history.totalCount} in all, oldest first.</p>}
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
                  <PagerBar
                    page={pager.page}
                    hasNext={history.pageInfo.hasNextPage}
                    onNext={() => pager.next(history.pageInfo.endCursor)}
                    onPrevious={pager.previous}
                  />
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
