// Operator: sessions (a device's stay on one node through one gateway).

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { CountedConnection, Session } from '../../api/types';
import { Async, Badge, ConfirmButton, Empty, Field, Link, Page, PagerBar, Table, toast } from '../../ui/components';
import { ago, bytes, when } from '../../ui/format';
import { useNow, usePager, usePoll, useQuery } from '../../ui/hooks';

export const SESSION_HEAD = ['Device', 'Node', 'Gateway', 'Started', 'Last activity', 'Ended', 'Traffic'];

/** Ends an open session (its tunnels close; the device's next one opens a new session). */
function CloseSession(props: { session: Session; changed: () => void }) {
  const name = props.session.device?.name ?? 'this device';
  return (
    <ConfirmButton
      small
      variant="danger"
      label="Close"
      title={`Close the session of “${name}”?`}
      body="Its tunnels close within seconds. The device may connect again at once, with a new session (on another node, if this one is draining)."
      confirmLabel="Close session"
      action={async () => {
        await gql(doc.CLOSE_SESSION, { id: props.session.id });
        toast(`The session of “${name}” closed`);
      }}
      done={props.changed}
    />
  );
}

/** Session rows; with `changed`, open ones get a Close button (and the table an extra column). */
export function SessionRows(props: { sessions: Session[]; now: number; showUser?: boolean; changed?: () => void }) {
  return (
    <>
      {props.sessions.map((s) => (
        <tr key={s.id}>
          <th scope="row">
            {s.device?.name ?? '—'}
            {props.showUser && s.device?.user && (
              <div class="small">
                <Link to={`/users/${s.device.user.id}`}>{s.device.user.email}</Link>
              </div>
            )}
          </th>
          <td>
            {s.outlineNode ? (
              <>
                {s.outlineNode.name} <span class="muted">{s.outlineNode.region?.code}</span>
              </>
            ) : (
              <span class="muted">deleted</span>
            )}
          </td>
          <td>{s.gatewayNode?.name ?? <span class="muted">—</span>}</td>
          <td>{when(s.startedAt)}</td>
          <td>{ago(s.lastActivityAt, props.now)}</td>
          <td>
            {s.endedAt ? (
              <>
                {when(s.endedAt)} <span class="muted small">{s.endReason}</span>
              </>
            ) : (
              <Badge tone="ok">open</Badge>
            )}
          </td>
          <td>
            ↓ {bytes(s.bytesDown)} · ↑ {bytes(s.bytesUp)}
          </td>
          {props.changed && <td>{!s.endedAt && <CloseSession session={s} changed={props.changed} />}</td>}
        </tr>
      ))}
    </>
  );
}

export function Sessions() {
  const now = useNow(5_000);
  const [open, setOpen] = useState<'' | 'true' | 'false'>('true');
  const pager = usePager();
  const q = useQuery(
    (signal) =>
      gql<{ sessions: CountedConnection<Session> }>(
        doc.SESSIONS,
        { filter: { open: open === '' ? undefined : open === 'true' }, first: 50, after: pager.after },
        signal,
      ),
    [open, pager.after],
  );
  usePoll(q.reload, 15_000);
  return (
    <Page title="Sessions">
      <div class="filters">
        <Field label="Show">
          {(id) => (
            <select
              id={id}
              value={open}
              onChange={(e) => {
                pager.reset();
                setOpen(e.currentTarget.value as '' | 'true' | 'false');
              }}
            >
              <option value="true">open sessions</option>
              <option value="false">ended sessions</option>
              <option value="">all sessions</option>
            </select>
          )}
        </Field>
      </div>
      <Async q={q}>
        {(d) =>
          d.sessions.nodes.length === 0 ? (
            <Empty>{open === 'true' ? 'No open sessions right now.' : 'No sessions.'}</Empty>
          ) : (
            <>
              <p class="muted" data-testid="sessions-total">
                {d.sessions.totalCount} {d.sessions.totalCount === 1 ? 'session' : 'sessions'}, newest first.
              </p>
              <Table label="Sessions" head={[...SESSION_HEAD, '']}>
                <SessionRows sessions={d.sessions.nodes} now={now} showUser changed={q.reload} />
              </Table>
              <PagerBar
                page={pager.page}
                hasNext={d.sessions.pageInfo.hasNextPage}
                onNext={() => pager.next(d.sessions.pageInfo.endCursor)}
                onPrevious={pager.previous}
              />
            </>
          )
        }
      </Async>
    </Page>
  );
}
