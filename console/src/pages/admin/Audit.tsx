// Operator: the audit log of admin actions, filtered by action and admin.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { AuditEntry, Connection, CountedConnection, User } from '../../api/types';
import { Async, Empty, Field, Link, Page, PagerBar, Table } from '../../ui/components';
import { shortId, when } from '../../ui/format';
import { usePager, useQuery } from '../../ui/hooks';

/** Every action the server audits (the `audit::entry` calls of crates/control). */
const ACTIONS = [
  'archive_plan',
  'cancel_subscription',
  'change_subscription_plan',
  'close_session',
  'create_plan',
  'create_region',
  'create_user',
  'delete_node',
  'delete_region',
  'enroll',
  'extend_subscription',
  'grant_subscription',
  'register_device',
  'register_gateway_node',
  'register_outline_node',
  'rename_device',
  'rename_region',
  'reset_subscription_traffic',
  'revoke_device',
  'rotate_device_token',
  'rotate_node_token',
  'set_node_status',
  'set_subscription_traffic_limit',
  'set_user_password',
  'set_user_role',
  'set_user_status',
  'update_gateway_node',
  'update_outline_node',
  'update_plan',
  'update_settings',
];

/** The details JSON as "key: value" pairs. */
export function AuditDetails(props: { details: string }) {
  let parsed: unknown;
  try {
    parsed = JSON.parse(props.details);
  } catch {
    return <span class="mono small">{props.details}</span>;
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    return <span class="mono small">{props.details}</span>;
  }
  const entries = Object.entries(parsed as Record<string, unknown>);
  if (!entries.length) return <span class="muted">—</span>;
  return (
    <span class="kv small">
      {entries.map(([k, v]) => (
        <span key={k}>
          <span class="muted">{k}</span> {typeof v === 'string' ? v : JSON.stringify(v)}
        </span>
      ))}
    </span>
  );
}

function targetLink(e: AuditEntry) {
  if (!e.targetId) return <span class="muted">—</span>;
  if (e.targetType === 'user') return <Link to={`/users/${e.targetId}`}>user {shortId(e.targetId)}</Link>;
  return (
    <span title={e.targetId}>
      {e.targetType} <span class="mono">{shortId(e.targetId)}</span>
    </span>
  );
}

export function Audit() {
  const [action, setAction] = useState('');
  const [actor, setActor] = useState('');
  const pager = usePager();
  const admins = useQuery(
    (signal) => gql<{ users: Connection<User> }>(doc.USERS, { filter: { role: 'ADMIN' }, first: 100 }, signal),
    [],
  );
  const emails = new Map((admins.data?.users.nodes ?? []).map((u) => [u.id, u.email]));
  const q = useQuery(
    (signal) =>
      gql<{ auditLog: CountedConnection<AuditEntry> }>(
        doc.AUDIT_LOG,
        { filter: { action: action || undefined, actorUserId: actor || undefined }, first: 50, after: pager.after },
        signal,
      ),
    [action, actor, pager.after],
  );
  return (
    <Page title="Audit log">
      <div class="filters">
        <Field label="Action">
          {(id) => (
            <select
              id={id}
              value={action}
              onChange={(e) => {
                pager.reset();
                setAction(e.currentTarget.value);
              }}
            >
              <option value="">any action</option>
              {ACTIONS.map((a) => (
                <option key={a} value={a}>
                  {a.replace(/_/g, ' ')}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Admin">
          {(id) => (
            <select
              id={id}
              value={actor}
              onChange={(e) => {
                pager.reset();
                setActor(e.currentTarget.value);
              }}
            >
              <option value="">any admin</option>
              {(admins.data?.users.nodes ?? []).map((u) => (
                <option key={u.id} value={u.id}>
                  {u.email}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      <Async q={q}>
        {(d) =>
          d.auditLog.nodes.length === 0 ? (
            <Empty>No entries{action || actor ? ' match these filters' : ' yet'}.</Empty>
          ) : (
            <>
              <p class="muted">
                {d.auditLog.totalCount} {d.auditLog.totalCount === 1 ? 'entry' : 'entries'}, newest first.
              </p>
              <Table label="Audit log" head={['When', 'Admin', 'Action', 'Target', 'Details']}>
                {d.auditLog.nodes.map((e) => (
                  <tr key={e.id}>
                    <td>{when(e.createdAt)}</td>
                    <td>
                      {e.actorUserId ? (
                        <Link to={`/users/${e.actorUserId}`}>{emails.get(e.actorUserId) ?? shortId(e.actorUserId)}</Link>
                      ) : (
                        <span class="muted" title="Done without an account: the command line (httvps …), httvps up, or a machine enrolling">
                          system (command line)
                        </span>
                      )}
                    </td>
                    <td class="mono">{e.action}</td>
                    <td>{targetLink(e)}</td>
                    <td>
                      <AuditDetails details={e.details} />
                    </td>
                  </tr>
                ))}
              </Table>
              <PagerBar
                page={pager.page}
                hasNext={d.auditLog.pageInfo.hasNextPage}
                onNext={() => pager.next(d.auditLog.pageInfo.endCursor)}
                onPrevious={pager.previous}
              />
            </>
          )
        }
      </Async>
    </Page>
  );
}
