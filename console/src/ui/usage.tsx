// Traffic of one user (or of everyone, for admins) over the last 24 hours
// and 30 days, from `usage`, re-read every minute.

import * as doc from '../api/documents';
import { gql } from '../api/graphql';
import type { UsagePoint } from '../api/types';
import { usageWindow, UsageChart } from './chart';
import { Async } from './components';
import { usePoll, useQuery } from './hooks';

/** Without `userId`, an admin sees everyone's traffic. */
export function UsageCharts(props: { userId?: string }) {
  const q = useQuery(async (signal) => {
    const day24 = usageWindow('HOUR');
    const day30 = usageWindow('DAY');
    const [h, d] = await Promise.all([
      gql<{ usage: UsagePoint[] }>(doc.USAGE, { userId: props.userId, ...day24, granularity: 'HOUR' }, signal),
      gql<{ usage: UsagePoint[] }>(doc.USAGE, { userId: props.userId, ...day30, granularity: 'DAY' }, signal),
    ]);
    return { h: h.usage, d: d.usage, day24, day30 };
  }, [props.userId]);
  usePoll(q.reload, 60_000);
  return (
    <Async q={q}>
      {(u) => (
        <div class="charts">
          <UsageChart title="Last 24 hours" points={u.h} {...u.day24} granularity="HOUR" />
          <UsageChart title="Last 30 days" points={u.d} {...u.day30} granularity="DAY" />
        </div>
      )}
    </Async>
  );
}
