// Statuses as badges: the same words and colours on every page.

import type { Device, Role, Subscription, UserStatus } from '../api/types';
import { Badge } from './components';

export function DeviceStatusBadge(props: { status: Device['status']; overLimit?: boolean }) {
  if (props.status !== 'ACTIVE') return <Badge tone="bad">revoked</Badge>;
  // Active, but the plan covers fewer devices: it connects once another is revoked.
  return props.overLimit ? <Badge tone="warn">over the device limit</Badge> : <Badge tone="ok">active</Badge>;
}

export function RoleBadge(props: { role: Role }) {
  return props.role === 'ADMIN' ? <Badge tone="info">admin</Badge> : <Badge tone="muted">user</Badge>;
}

export function UserStatusBadge(props: { status: UserStatus }) {
  return props.status === 'ACTIVE' ? <Badge tone="ok">active</Badge> : <Badge tone="bad">disabled</Badge>;
}

export function SubscriptionStatusBadge(props: { status: Subscription['status'] }) {
  const tone = props.status === 'ACTIVE' ? 'ok' : props.status === 'EXPIRED' ? 'warn' : 'muted';
  return <Badge tone={tone}>{props.status.toLowerCase()}</Badge>;
}
