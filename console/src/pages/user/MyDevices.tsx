// Subscriber: my devices. Add one (its links as QR codes, shown once),
// rename it, rotate its token, revoke it; the region and node each is connected to,
// live. Changes made elsewhere (an operator revoking a device, a tunnel
// opening) show up without a reload.

import { useEffect, useMemo, useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { CountedConnection, Device, DeviceCredentials, DevicePlacement, UUID } from '../../api/types';
import {
  Async,
  Button,
  ConfirmButton,
  Empty,
  ErrorNote,
  Field,
  Page,
  PagerBar,
  Table,
  toast,
  useAction,
} from '../../ui/components';
import { DeviceStatusBadge } from '../../ui/badges';
import { CredentialsDialog } from '../../ui/credentials';
import { ago, when } from '../../ui/format';
import { useNow, usePager, usePoll, useQuery } from '../../ui/hooks';
import { PlacementCell, useLivePlacements } from './placement';
import { RenameDevice } from './renameDevice';

const PLATFORMS = ['android', 'ios', 'windows', 'macos', 'linux', 'other'];
const PAGE_SIZE = 50;
/** A safety net: live events keep the list current, this re-reads it anyway. */
const POLL_MS = 60_000;

type MyDevice = Device & { placement: DevicePlacement | null };

function AddDevice(props: { onAdded: (c: DeviceCredentials) => void; revoked: number }) {
  const [name, setName] = useState('');
  const [platform, setPlatform] = useState('android');
  const act = useAction(async () => {
    const d = await gql<{ registerDevice: DeviceCredentials }>(doc.REGISTER_DEVICE, {
      name: name.trim(),
      platform,
    });
    setName('');
    props.onAdded(d.registerDevice);
  });
  // A device revoked since the last attempt may have made room: the
  // attempt's error (the limit reached) no longer holds.
  const { setError } = act;
  useEffect(() => setError(null), [props.revoked, setError]);
  return (
    <section class="card" aria-labelledby="add-title">
      <h2 id="add-title">Add a device</h2>
      <form
        class="form-row"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Name" hint="So you can tell your devices apart.">
          {(id, hint) => (
            <input
              id={id}
              required
              maxLength={64}
              placeholder="My phone"
              aria-describedby={hint}
              value={name}
              onInput={(e) => setName(e.currentTarget.value)}
            />
          )}
        </Field>
        <Field label="Platform">
          {(id) => (
            <select id={id} value={platform} onChange={(e) => setPlatform(e.currentTarget.value)}>
              {PLATFORMS.map((p) => (
                <option key={p} value={p}>
                  {p}
                </option>
              ))}
            </select>
          )}
        </Field>
        <div class="form-actions">
          <Button type="submit" variant="primary" busy={act.busy}>
            Add device
          </Button>
        </div>
      </form>
      <ErrorNote error={act.error} />
    </section>
  );
}

export function MyDevices(props: { userId: string }) {
  const now = useNow(5_000);
  const pager = usePager();
  const [creds, setCreds] = useState<DeviceCredentials | null>(null);
  const [renaming, setRenaming] = useState<Device | null>(null);
  const q = useQuery(
    (signal) =>
      gql<{ devices: CountedConnection<MyDevice> }>(
        doc.MY_DEVICES,
        { userId: props.userId, first: PAGE_SIZE, after: pager.after },
        signal,
      ),
    [props.userId, pager.after],
  );
  const listed = useMemo(
    () => q.data && new Map<UUID, DevicePlacement | null>(q.data.devices.nodes.map((n) => [n.id, n.placement])),
    [q.data],
  );
  const placement = useLivePlacements(listed, q.reload);
  usePoll(q.reload, POLL_MS);

  const rotate = async (d: Device) => {
    const r = await gql<{ rotateDeviceToken: DeviceCredentials }>(doc.ROTATE_DEVICE, { id: d.id });
    setCreds(r.rotateDeviceToken);
  };
  const [revoked, setRevoked] = useState(0);
  const revoke = async (d: Device) => {
    await gql(doc.REVOKE_DEVICE, { id: d.id });
    setRevoked((n) => n + 1);
    toast(`“${d.name}” revoked: its tunnels are closed.`);
  };

  return (
    <Page title="My devices">
      <AddDevice
        revoked={revoked}
        onAdded={(c) => {
          setCreds(c);
          q.reload();
        }}
      />
      <section class="card" aria-labelledby="list-title">
        <h2 id="list-title">
          Devices{q.data ? <span class="muted"> ({q.data.devices.totalCount})</span> : null}
        </h2>
        <Async q={q}>
          {(d) =>
            d.devices.nodes.length === 0 ? (
              <Empty>No devices yet. Add one above to get its connection links.</Empty>
            ) : (
              <>
                <Table
                  label="My devices"
                  head={[
                    'Name',
                    'Platform',
                    'Status',
                    'Connected to',
                    'Last seen',
                    'Added',
                    '',
                  ]}
                >
                  {d.devices.nodes.map((dev) => (
                    <tr key={dev.id} data-device-id={dev.id}>
                      <th scope="row">{dev.name}</th>
                      <td>{dev.platform}</td>
                      <td class="device-status">
                        <DeviceStatusBadge status={dev.status} overLimit={dev.overLimit} />
                      </td>
                      <td class="device-placement">
                        <PlacementCell placement={placement(dev.id)} />
                      </td>
                      <td title={dev.lastSeenAt ?? undefined}>{ago(dev.lastSeenAt, now)}</td>
                      <td>{when(dev.createdAt)}</td>
                      <td class="row-actions">
                        {dev.status === 'ACTIVE' && (
                          <>
                            <Button small onClick={() => setRenaming(dev)}>
                              Rename
                            </Button>
                            <ConfirmButton
                              small
                              label="New links"
                              title={`New links for “${dev.name}”?`}
                              body="The device gets a new token and new links; the old ones stop working at once."
                              confirmLabel="Rotate token"
                              action={() => rotate(dev)}
                              done={q.reload}
                            />
                            <ConfirmButton
                              small
                              variant="danger"
                              label="Revoke"
                              title={`Revoke “${dev.name}”?`}
                              body="Its tunnels close and its links stop working. This cannot be undone."
                              action={() => revoke(dev)}
                              done={q.reload}
                            />
                          </>
                        )}
                      </td>
                    </tr>
                  ))}
                </Table>
                <PagerBar
                  page={pager.page}
                  hasNext={d.devices.pageInfo.hasNextPage}
                  onNext={() => pager.next(d.devices.pageInfo.endCursor)}
                  onPrevious={pager.previous}
                />
              </>
            )
          }
        </Async>
      </section>
      {creds && <CredentialsDialog creds={creds} onClose={() => setCreds(null)} />}
      {renaming && <RenameDevice device={renaming} onClose={() => setRenaming(null)} onSaved={q.reload} />}
    </Page>
  );
}
