// Where a subscriber's devices are (proposed: Device.placement and
// Live.myDeviceEvents). Until the server offers them the devices page shows
// no location and learns of changes made elsewhere by polling.

import { useState } from 'preact/hooks';

import { gql } from '../api/graphql';
import type { DateTime, UUID } from '../api/types';
import { Badge } from '../ui/components';
import { useLive, useQuery } from '../ui/hooks';
import { useCapability } from './useCapability';

export interface DevicePlacement {
  sessionId: UUID;
  region: string;
  regionName: string;
  nodeId: UUID;
  nodeName: string;
  nodeHealth: string;
  since: DateTime;
}

interface DeviceEvent {
  kind: 'REVOKED' | 'ROTATED' | 'SESSION_OPENED' | 'SESSION_CLOSED';
  deviceId: UUID;
  placement: DevicePlacement | null;
  at: DateTime;
}

const PLACEMENT = 'sessionId region regionName nodeId nodeName nodeHealth since';
const PLACEMENTS = `query DevicePlacements($userId: UUID!) { devices(first: 100, filter: { userId: $userId, status: ACTIVE }) {
  nodes { id placement { ${PLACEMENT} } } } }`;
const DEVICE_EVENTS = `subscription MyDeviceEvents { myDeviceEvents { kind deviceId at placement { ${PLACEMENT} } } }`;

/**
 * Placements of the caller's devices, kept live. `supported` is false while
 * the server lacks the fields; `onDeviceChanged` fires on revocations and
 * rotations made elsewhere.
 */
export function useDevicePlacements(userId: UUID, onDeviceChanged: () => void) {
  const supported = useCapability('devicePlacement') === true;
  const [live, setLive] = useState<Map<UUID, DevicePlacement | null>>(new Map());
  const q = useQuery(
    async () => {
      if (!supported) return new Map<UUID, DevicePlacement | null>();
      const d = await gql<{ devices: { nodes: { id: UUID; placement: DevicePlacement | null }[] } }>(PLACEMENTS, { userId });
      setLive(new Map());
      return new Map(d.devices.nodes.map((n) => [n.id, n.placement]));
    },
    [supported, userId],
  );
  useLive<{ myDeviceEvents: DeviceEvent }>(
    DEVICE_EVENTS,
    {},
    ({ myDeviceEvents: e }) => {
      setLive((m) => new Map(m).set(e.deviceId, e.placement));
      if (e.kind === 'REVOKED' || e.kind === 'ROTATED') onDeviceChanged();
    },
    { enabled: supported, onReconnect: q.reload },
  );
  const placement = (id: UUID): DevicePlacement | null | undefined =>
    live.has(id) ? live.get(id) : q.data?.get(id);
  return { supported, placement, reload: q.reload };
}

export function PlacementCell(props: { placement: DevicePlacement | null | undefined }) {
  const p = props.placement;
  if (!p) return <span class="muted">not connected</span>;
  const tone = p.nodeHealth === 'up' ? 'ok' : p.nodeHealth === 'down' ? 'bad' : 'muted';
  return (
    <span>
      {p.regionName} · {p.nodeName} <Badge tone={tone}>{p.nodeHealth}</Badge>
    </span>
  );
}
