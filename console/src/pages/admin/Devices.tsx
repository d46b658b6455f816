// Operator: every device. Revoke, rotate.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, Device, DeviceCredentials, DeviceStatus } from '../../api/types';
import { Async, Empty, Field, Link, Page, PagerBar, Table } from '../../ui/components';
import { DeviceStatusBadge } from '../../ui/badges';
import { CredentialsDialog } from '../../ui/credentials';
import { ago, day } from '../../ui/format';
import { useNow, usePager, useQuery } from '../../ui/hooks';
import { DeviceActions } from './deviceActions';

export function Devices() {
  const now = useNow(10_000);
  const [status, setStatus] = useState<DeviceStatus | ''>('ACTIVE');
  const [creds, setCreds] = useState<DeviceCredentials | null>(null);
  const pager = usePager();
  const q = useQuery(
    (signal) =>
      gql<{ devices: Connection<Device> }>(
        doc.DEVICES,
        { filter: { status: status || undefined }, first: 50, after: pager.after },
        signal,
      ),
    [status, pager.after],
  );
  return (
    <Page title="Devices">
      <div class="filters">
        <Field label="Status">
          {(id) => (
            <select
              id={id}
              value={status}
              onChange={(e) => {
                pager.reset();
                setStatus(e.currentTarget.value as DeviceStatus | '');
              }}
            >
              <option value="ACTIVE">active</option>
              <option value="REVOKED">revoked</option>
              <option value="">any</option>
            </select>
          )}
        </Field>
      </div>
      <Async q={q}>
        {(d) =>
          d.devices.nodes.length === 0 ? (
            <Empty>No devices.</Empty>
          ) : (
            <>
              <Table label="Devices" head={['Device', 'Owner', 'Platform', 'Status', 'Last seen', 'Added', '']}>
                {d.devices.nodes.map((dev) => (
                  <tr key={dev.id} data-device-id={dev.id}>
                    <th scope="row">{dev.name}</th>
                    <td>{dev.user ? <Link to={`/users/${dev.user.id}`}>{dev.user.email}</Link> : '—'}</td>
                    <td>{dev.platform}</td>
                    <td class="device-status">
                      <DeviceStatusBadge status={dev.status} overLimit={dev.overLimit} />
                    </td>
                    <td>{ago(dev.lastSeenAt, now)}</td>
                    <td>{day(dev.createdAt)}</td>
                    <td>
                      <DeviceActions device={dev} changed={q.reload} onCreds={setCreds} />
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
      {creds && <CredentialsDialog creds={creds} onClose={() => setCreds(null)} />}
    </Page>
  );
}
