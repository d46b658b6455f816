// Operator: one account. Its subscriptions, devices, sessions, usage and
// audit trail; disable or enable it, change its role, grant it a plan.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import { session as currentSession } from '../../api/session';
import type {
  AuditEntry,
  Connection,
  CountedConnection,
  Device,
  DeviceCredentials,
  Role,
  Session,
  Subscription,
  User,
} from '../../api/types';
import {
  Async,
  Button,
  ConfirmButton,
  Empty,
  Link,
  Page,
  PagerBar,
  Table,
  toast,
} from '../../ui/components';
import { DeviceStatusBadge, RoleBadge, SubscriptionStatusBadge, UserStatusBadge } from '../../ui/badges';
import { CredentialsDialog } from '../../ui/credentials';
import { ago, day, when } from '../../ui/format';
import { useNow, usePager, useQuery, useStore } from '../../ui/hooks';
import { Expiry, TrafficBar } from '../../ui/subscription';
import { UsageCharts } from '../../ui/usage';
import { auditTrail } from './auditTrail';
import { DeviceActions } from './deviceActions';
import { RoleField, SetPassword } from './accountDialogs';
import { AuditDetails } from './Audit';
import { SessionRows, SESSION_HEAD } from './Sessions';
import { GrantDialog, SubscriptionActions } from './subscriptionActions';

function AccountControls(props: { user: User; changed: (u: User) => void }) {
  const me = useStore(currentSession);
  const self = me.status === 'signed-in' && me.user.id === props.user.id;
  const [role, setRole] = useState<Role>(props.user.role);
  const [settingPassword, setSettingPassword] = useState(false);
  const u = props.user;
  return (
    <div class="controls">
      <Button onClick={() => setSettingPassword(true)}>Set password</Button>
      {settingPassword && <SetPassword user={u} onClose={() => setSettingPassword(false)} />}
      {u.status === 'ACTIVE' ? (
        <ConfirmButton
          variant="danger"
          label="Disable account"
          title={`Disable ${u.email}?`}
          body={
            <>
              It is signed out everywhere and its tunnels close.{self && <strong> This is your own account.</strong>}
            </>
          }
          action={async () => {
            const d = await gql<{ setUserStatus: User }>(doc.SET_USER_STATUS, { id: u.id, status: 'DISABLED' });
            props.changed(d.setUserStatus);
          }}
        />
      ) : (
        <ConfirmButton
          label="Enable account"
          title={`Enable ${u.email}?`}
          body="It may sign in and connect again."
          action={async () => {
            const d = await gql<{ setUserStatus: User }>(doc.SET_USER_STATUS, { id: u.id, status: 'ACTIVE' });
            props.changed(d.setUserStatus);
          }}
        />
      )}
      <div class="inline-form">
        <RoleField value={role} set={setRole} />
        {role !== u.role && (
          <ConfirmButton
            label="Change role"
            title={`Make ${u.email} ${role === 'ADMIN' ? 'an admin' : 'a user'}?`}
            body="Its current tokens stop working: it signs in again with the new role."
            action={async () => {
              const d = await gql<{ setUserRole: User }>(doc.SET_USER_ROLE, { id: u.id, role });
              props.changed(d.setUserRole);
              toast(`${u.email} is now ${role === 'ADMIN' ? 'an admin' : 'a user'}`);
            }}
          />
        )}
      </div>
    </div>
  );
}

type AdminSub = Subscription & { plan: Subscription['plan'] };

/** Rows of each list card (subscriptions, devices, sessions) per page. */
const PAGE_SIZE = 25;

export function UserDetail(props: { id: string }) {
  const now = useNow(30_000);
  const [granting, setGranting] = useState(false);
  const [creds, setCreds] = useState<DeviceCredentials | null>(null);
  const subsPager = usePager();
  const devicesPager = usePager();
  const sessionsPager = usePager();
  const user = useQuery((signal) => gql<{ user: User | null }>(doc.USER_DETAIL, { id: props.id }, signal), [props.id]);
  // The subscription in force comes from its own query, so it is there
  // whatever the length of the history, which is paged (oldest first).
  const subs = useQuery(
    (signal) =>
      gql<{ current: Connection<AdminSub>; subscriptions: CountedConnection<AdminSub> }>(
        doc.USER_SUBSCRIPTIONS,
        { userId: props.id, first: PAGE_SIZE, after: subsPager.after },
        signal,
      ),
    [props.id, subsPager.after],
  );
  const devices = useQuery(
    (signal) =>
      gql<{ devices: CountedConnection<Device> }>(
        doc.DEVICES,
        { filter: { userId: props.id }, first: PAGE_SIZE, after: devicesPager.after },
        signal,
      ),
    [props.id, devicesPager.after],
  );
  const sessions = useQuery(
    (signal) =>
      gql<{ sessions: Connection<Session> }>(
        doc.SESSIONS,
        { filter: { userId: props.id }, first: PAGE_SIZE, after: sessionsPager.after },
        signal,
      ),
    [props.id, sessionsPager.after],
  );
  // The trail covers the account and the subscriptions and devices shown.
  const related = new Set([
    ...(subs.data?.current.nodes.map((s) => s.id) ?? []),
    ...(subs.data?.subscriptions.nodes.map((s) => s.id) ?? []),
    ...(devices.data?.devices.nodes.map((d) => d.id) ?? []),
  ]);
  const allShown =
    subsPager.page === 1 &&
    !subs.data?.subscriptions.pageInfo.hasNextPage &&
    devicesPager.page === 1 &&
    !devices.data?.devices.pageInfo.hasNextPage;
  const trail = useQuery(
    async (signal) => {
      if (!user.data?.user || !subs.data || !devices.data) return undefined;
      const t = await auditTrail(user.data.user, related, signal);
      return { ...t, complete: t.complete && allShown };
    },
    [user.data, subs.data, devices.data],
  );

  return (
    <Async q={user}>
      {(d) => {
        const u = d.user;
        if (!u) {
          return (
            <Page title="User not found">
              <Empty>
                No account with this id. <Link to="/users">Back to users</Link>
              </Empty>
            </Page>
          );
        }
        return (
          <Page
            title={u.email}
            actions={
              <Button variant="primary" onClick={() => setGranting(true)}>
                Grant plan
              </Button>
            }
          >
            <p class="breadcrumbs">
              <Link to="/users">Users</Link> / {u.email}
            </p>
            <section class="card">
              <dl class="facts">
                <dt>Role</dt>
                <dd>
                  <RoleBadge role={u.role} />
                </dd>
                <dt>Status</dt>
                <dd>
                  <UserStatusBadge status={u.status} />
                </dd>
                <dt>Created</dt>
                <dd>{when(u.createdAt)}</dd>
                <dt>Id</dt>
                <dd class="mono">{u.id}</dd>
              </dl>
              <AccountControls user={u} changed={(nu) => user.setData(() => ({ user: nu }))} />
            </section>

            <section class="card" aria-labelledby="subs-title">
              <h2 id="subs-title">Subscriptions</h2>
              <Async q={subs}>
                {(s) => {
                  const current = s.current.nodes[0];
                  const history = s.subscriptions;
                  if (!current && history.totalCount === 0) {
                    return <Empty>No subscriptions. Grant a plan to let this user connect.</Empty>;
                  }
                  const whole = subsPager.page === 1 && !history.pageInfo.hasNextPage;
                  // The one in force first, then the rest: newest first when
                  // all are here, else a page of the history, oldest first.
                  const rest = history.nodes.filter((sub) => sub.id !== current?.id);
                  const rows = [...(current ? [current] : []), ...(whole ? rest.reverse() : rest)];
                  return (
                    <>
                      {!whole && (
                        <p class="muted">
                          {history.totalCount} in all{current ? ': the one in force first, then the others' : ''}, oldest
                          first.
                        </p>
                      )}
                      <Table label="Subscriptions" head={['Plan', 'Status', 'Expires', 'Traffic', '']}>
                        {rows.map((sub) => (
                          <tr key={sub.id}>
                            <th scope="row">{sub.plan?.name ?? '—'}</th>
                            <td>
                              <SubscriptionStatusBadge status={sub.status} />
                            </td>
                            <td>
                              <Expiry at={sub.expiresAt} now={now} />
                            </td>
                            <td>
                              <TrafficBar used={sub.trafficUsedBytes} limit={sub.trafficLimitBytes} />
                            </td>
                            <td>
                              <SubscriptionActions sub={sub} changed={subs.reload} />
                            </td>
                          </tr>
                        ))}
                      </Table>
                      <PagerBar
                        page={subsPager.page}
                        hasNext={history.pageInfo.hasNextPage}
                        onNext={() => subsPager.next(history.pageInfo.endCursor)}
                        onPrevious={subsPager.previous}
                      />
                    </>
                  );
                }}
              </Async>
            </section>

            <section class="card" aria-labelledby="devices-title">
              <h2 id="devices-title">Devices</h2>
              <Async q={devices}>
                {(dv) =>
                  dv.devices.nodes.length === 0 && devicesPager.page === 1 ? (
                    <Empty>No devices.</Empty>
                  ) : (
                    <>
                      {(devicesPager.page > 1 || dv.devices.pageInfo.hasNextPage) && (
                        <p class="muted">{dv.devices.totalCount} in all, oldest first.</p>
                      )}
                      <Table label="Devices" head={['Device', 'Platform', 'Status', 'Last seen', 'Added', '']}>
                        {dv.devices.nodes.map((dev) => (
                          <tr key={dev.id} data-device-id={dev.id}>
                            <th scope="row">{dev.name}</th>
                            <td>{dev.platform}</td>
                            <td class="device-status">
                              <DeviceStatusBadge status={dev.status} overLimit={dev.overLimit} />
                            </td>
                            <td>{ago(dev.lastSeenAt, now)}</td>
                            <td>{day(dev.createdAt)}</td>
                            <td>
                              <DeviceActions device={dev} changed={devices.reload} onCreds={setCreds} />
                            </td>
                          </tr>
                        ))}
                      </Table>
                      <PagerBar
                        page={devicesPager.page}
                        hasNext={dv.devices.pageInfo.hasNextPage}
                        onNext={() => devicesPager.next(dv.devices.pageInfo.endCursor)}
                        onPrevious={devicesPager.previous}
                      />
                    </>
                  )
                }
              </Async>
            </section>

            <section class="card" aria-labelledby="sessions-title">
              <h2 id="sessions-title">Sessions</h2>
              <Async q={sessions}>
                {(s) =>
                  s.sessions.nodes.length === 0 ? (
                    <Empty>No sessions yet.</Empty>
                  ) : (
                    <>
                      <Table label="Sessions" head={SESSION_HEAD}>
                        <SessionRows sessions={s.sessions.nodes} now={now} />
                      </Table>
                      <PagerBar
                        page={sessionsPager.page}
                        hasNext={s.sessions.pageInfo.hasNextPage}
                        onNext={() => sessionsPager.next(s.sessions.pageInfo.endCursor)}
                        onPrevious={sessionsPager.previous}
                      />
                    </>
                  )
                }
              </Async>
            </section>

            <section class="card" aria-labelledby="usage-title">
              <h2 id="usage-title">Traffic</h2>
              <UsageCharts userId={u.id} />
            </section>

            <section class="card" aria-labelledby="trail-title">
              <h2 id="trail-title">Audit trail</h2>
              <Async q={trail}>
                {(t) =>
                  !t ? (
                    <p class="muted">Waiting for the account's subscriptions and devices…</p>
                  ) : t.entries.length === 0 ? (
                    <Empty>No admin action concerns this account.</Empty>
                  ) : (
                    <>
                      <Table label="Audit trail" head={['When', 'Action', 'Target', 'Details']}>
                        {t.entries.map((e: AuditEntry) => (
                          <tr key={e.id}>
                            <td>{when(e.createdAt)}</td>
                            <td class="mono">{e.action}</td>
                            <td>{e.targetType}</td>
                            <td>
                              <AuditDetails details={e.details} />
                            </td>
                          </tr>
                        ))}
                      </Table>
                      {!t.complete && (
                        <p class="muted">
                          Only the newest 50 entries about the account and each of its records shown above are
                          here: <Link to="/audit">the audit log</Link> has them all.
                        </p>
                      )}
                    </>
                  )
                }
              </Async>
            </section>

            {granting && (
              <GrantDialog
                user={u}
                onClose={() => setGranting(false)}
                onGranted={() => {
                  setGranting(false);
                  subs.reload();
                }}
              />
            )}
            {creds && <CredentialsDialog creds={creds} onClose={() => setCreds(null)} />}
          </Page>
        );
      }}
    </Async>
  );
}

