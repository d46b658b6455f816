// Revoking a device and rotating its token, from an operator's lists.

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Device, DeviceCredentials } from '../../api/types';
import { ConfirmButton, toast } from '../../ui/components';

export function DeviceActions(props: { device: Device; changed: () => void; onCreds: (c: DeviceCredentials) => void }) {
  const d = props.device;
  if (d.status !== 'ACTIVE') return null;
  return (
    <span class="row-actions">
      <ConfirmButton
        small
        label="Rotate"
        title={`Rotate the token of “${d.name}”?`}
        body="The old token and links stop working at once; you get the new ones to hand over."
        confirmLabel="Rotate token"
        action={async () => {
          const r = await gql<{ rotateDeviceToken: DeviceCredentials }>(doc.ROTATE_DEVICE, { id: d.id });
          props.onCreds(r.rotateDeviceToken);
        }}
        done={props.changed}
      />
      <ConfirmButton
        small
        variant="danger"
        label="Revoke"
        title={`Revoke “${d.name}”?`}
        body="Its tunnels close within seconds and its links stop working."
        action={async () => {
          await gql(doc.REVOKE_DEVICE, { id: d.id });
          toast(`“${d.name}” revoked`);
        }}
        done={props.changed}
      />
    </span>
  );
}
