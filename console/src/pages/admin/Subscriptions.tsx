// Operator: subscriptions (the billing record). Grant, extend, cancel.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, Subscription, SubscriptionStatus } from '../../api/types';
import { Async, Button, Empty, Field, Link, Page, PagerBar, Table } from '../../ui/components';
import { useNow, usePager, useQuery } from '../../ui/hooks';
import { SubscriptionStatusBadge } from '../../ui/badges';
import { Expiry, TrafficBar } from '../../ui/subscription';
import { GrantDialog, SubscriptionActions } from './subscriptionActions';

export function Subscriptions() {
  const now = useNow(30_000);
  const [status, setStatus] = useState<SubscriptionStatus | ''>('ACTIVE');
  const [granting, setGranting] = useState(false);
  const pager = usePager();
  const q = useQuery(
    (signal) =>
      gql<{ subscriptions: Connection<Subscription> }>(
        doc.SUBSCRIPTIONS,
        { filter: { status: status || undefined }, first: 50, after: pager.after },
        signal,
      ),
    [status, pager.after],
  );
  return (
    <Page
      title="Subscriptions"
      actions={
        <Button variant="primary" onClick={() => setGranting(true)}>
          Grant plan
        </Button>
      }
    >
      <div class="filters">
        <Field label="Status">
          {(id) => (
            <select
              id={id}
              value={status}
              onChange={(e) => {
                pager.reset();
                setStatus(e.currentTarget.value as SubscriptionStatus | '');
              }}
            >
              <option value="ACTIVE">active</option>
              <option value="EXPIRED">expired</option>
              <option value="CANCELLED">cancelled</option>
              <option value="">any</option>
            </select>
          )}
        </Field>
      </div>
      <Async q={q}>
        {(d) =>
          d.subscriptions.nodes.length === 0 ? (
            <Empty>No subscriptions{status ? ` with status ${status.toLowerCase()}` : ''}.</Empty>
          ) : (
            <>
              <Table label="Subscriptions" head={['User', 'Plan', 'Status', 'Expires', 'Traffic', '']}>
                {d.subscriptions.nodes.map((s) => (
                  <tr key={s.id}>
                    <th scope="row">{s.user ? <Link to={`/users/${s.user.id}`}>{s.user.email}</Link> : '—'}</th>
                    <td>{s.plan?.name ?? '—'}</td>
                    <td>
                      <SubscriptionStatusBadge status={s.status} />
                    </td>
                    <td>
                      <Expiry at={s.expiresAt} now={now} />
                    </td>
                    <td>
                      <TrafficBar used={s.trafficUsedBytes} limit={s.trafficLimitBytes} />
                    </td>
                    <td>
                      <SubscriptionActions sub={s} changed={q.reload} />
                    </td>
                  </tr>
                ))}
              </Table>
              <PagerBar
                page={pager.page}
                hasNext={d.subscriptions.pageInfo.hasNextPage}
                onNext={() => pager.next(d.subscriptions.pageInfo.endCursor)}
                onPrevious={pager.previous}
              />
            </>
          )
        }
      </Async>
      {granting && (
        <GrantDialog
          onClose={() => setGranting(false)}
          onGranted={() => {
            setGranting(false);
            q.reload();
          }}
        />
      )}
    </Page>
  );
}
