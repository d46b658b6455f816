// A device's credentials, shown once after registering or rotating: the
// `ssconf://` and `ss://` links as QR codes with copy buttons, and the access
// token for httvps-relay.

import type { DeviceCredentials } from '../api/types';
import { Button, Dialog, OnceValue } from './components';
import { QrCode } from './qr';

export function CredentialsDialog(props: { creds: DeviceCredentials; onClose: () => void }) {
  const { device, links, accessToken } = props.creds;
  return (
    <Dialog title={`Connect “${device.name}”`} onClose={props.onClose} wide>
      <p class="note warn">
        These links and the token are shown only now. Keep them private: anyone who has them can use this
        device's allowance. To get new ones later, rotate the device (the old ones stop working).
      </p>
      {links ? (
        <div class="qr-grid">
          <div class="qr-card">
            <h3>Outline app</h3>
            <p class="muted">Scan with Outline (1.15 or newer), or paste the link.</p>
            <QrCode value={links.ssconf} label="QR code of the ssconf:// link" testId="qr-ssconf" />
            <OnceValue label="ssconf:// link" value={links.ssconf} testId="link-ssconf" />
          </div>
          <div class="qr-card">
            <h3>Shadowsocks + v2ray-plugin</h3>
            <p class="muted">
              For clients with v2ray-plugin (WebSocket over TLS). TCP only: turn UDP off in the client, or use the
              Outline link for UDP.
            </p>
            <QrCode value={links.sip002} label="QR code of the ss:// link" testId="qr-sip002" />
            <OnceValue label="ss:// link" value={links.sip002} testId="link-sip002" />
          </div>
        </div>
      ) : (
        <p class="note info">
          No gateway is known yet, so there are no links. They come with the next rotation once the
          operator has registered a gateway. The access token below works with httvps-relay.
        </p>
      )}
      <OnceValue label="Access token (httvps-relay connect --device-token)" value={accessToken} testId="device-token" />
      <footer class="dialog-foot">
        <Button variant="primary" onClick={props.onClose}>
          Done
        </Button>
      </footer>
    </Dialog>
  );
}
