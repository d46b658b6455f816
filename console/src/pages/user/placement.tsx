// Where a subscriber's devices are: `Device.placement` (read with the list)
// kept live by `Live.myDeviceEvents` (sessions opening and closing,
// revocations, rotations, renames and device-limit marks, including those
// an operator makes).

import { useEffect, useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import type { DeviceEvent, DevicePlacement, UUID } from '../../api/types';
import { Badge } from '../../ui/components';
import { useLive } from '../../ui/hooks';

/**
 * Placements from the last read of the list (`listed`), overridden by live
 * events until the next read; `onChanged` re-reads the list (each event
 * asks for it, so the list catches up with the event).
 */
export function useLivePlacements(listed: Map<UUID, DevicePlacement | null> | undefined, onChanged: () => void) {
  const [live, setLive] = useState<Map<UUID, DevicePlacement | null>>(new Map());
  useEffect(() => setLive(new Map()), [listed]);
  useLive<{ myDeviceEvents: DeviceEvent }>(
    doc.MY_DEVICE_EVENTS,
    {},
    ({ myDeviceEvents: e }) => {
      setLive((m) => new Map(m).set(e.deviceId, e.placement));
      onChanged();
    },
    { onReconnect: onChanged },
  );
  return (id: UUID): DevicePlacement | null | undefined => (live.has(id) ? live.get(id) : listed?.get(id));
}

/** A device's region and node, with the node's health; or "not connected". */
export function PlacementCell(props: { placement: DevicePlacement | null | undefined }) {
  const p = props.placement;
  if (!p) return <span class="muted">not connected</span>;
  const tone = p.nodeHealth === 'up' ? 'ok' : p.nodeHealth === 'down' ? 'bad' : 'muted';
  return (
    <span title={`region ${p.region}, since ${p.since}`}>
      {p.regionName} · {p.nodeName} <Badge tone={tone}>{p.nodeHealth}</Badge>
    </span>
  );
}
