// The API's types as the console reads them (see schema.graphql). Byte
// counts are `BigInt` scalars: decimal strings. Times are RFC 3339 strings.

export type UUID = string;
export type BigIntString = string;
export type DateTime = string;

export type Role = 'ADMIN' | 'USER';
export type UserStatus = 'ACTIVE' | 'DISABLED';
export type DeviceStatus = 'ACTIVE' | 'REVOKED';
export type SubscriptionStatus = 'ACTIVE' | 'CANCELLED' | 'EXPIRED';
export type NodeStatus = 'ACTIVE' | 'DRAINING' | 'DISABLED';
export type ResetPeriod = 'NONE' | 'MONTHLY';
export type Granularity = 'HOUR' | 'DAY';

export interface PageInfo {
  hasNextPage: boolean;
  endCursor: string | null;
}

export interface Connection<T> {
  pageInfo: PageInfo;
  nodes: T[];
}

/** A connection that also says how many items its filter matches. */
export interface CountedConnection<T> extends Connection<T> {
  totalCount: number;
}

export type ListOrder = 'OLDEST_FIRST' | 'NEWEST_FIRST';

export interface User {
  id: UUID;
  email: string;
  role: Role;
  status: UserStatus;
  createdAt: DateTime;
}

export interface Plan {
  id: UUID;
  name: string;
  priceCents: BigIntString;
  currency: string;
  durationDays: number;
  trafficLimitBytes: BigIntString | null;
  deviceLimit: number;
  resetPeriod: ResetPeriod;
  archived: boolean;
  createdAt: DateTime;
}

export interface Region {
  id: UUID;
  code: string;
  name: string;
  poolMethod: string;
  createdAt: DateTime;
}

export interface Subscription {
  id: UUID;
  status: SubscriptionStatus;
  startsAt: DateTime;
  expiresAt: DateTime;
  trafficLimitBytes: BigIntString | null;
  trafficUsedBytes: BigIntString;
  periodStart: DateTime;
  /** Active devices it covers (the plan's limit when it was granted). */
  deviceLimit: number;
  user?: Pick<User, 'id' | 'email'> | null;
  plan?: Pick<Plan, 'id' | 'name' | 'deviceLimit' | 'resetPeriod'> | null;
}

export interface Device {
  id: UUID;
  name: string;
  platform: string;
  status: DeviceStatus;
  lastSeenAt: DateTime | null;
  createdAt: DateTime;
  revokedAt: DateTime | null;
  /** Active, but beyond the device limit of the owner's subscription. */
  overLimit: boolean;
  user?: Pick<User, 'id' | 'email'> | null;
}

export interface AccessLinks {
  ssconf: string;
  sip002: string;
}

export interface DeviceCredentials {
  device: Device;
  accessToken: string;
  links: AccessLinks | null;
}

export interface OutlineNode {
  id: UUID;
  name: string;
  host: string;
  port: number;
  method: string;
  usesPoolKey: boolean;
  status: NodeStatus;
  health: string;
  capacity: number;
  load: number;
  bytesIn: BigIntString;
  bytesOut: BigIntString;
  lastHeartbeatAt: DateTime | null;
  /** Until when the token of its latest enrollment string works if unused (null once used). */
  enrollmentExpiresAt: DateTime | null;
  version: string | null;
  createdAt: DateTime;
  region: Pick<Region, 'id' | 'code' | 'name'> | null;
}

export interface GatewayNode {
  id: UUID;
  name: string;
  publicUrl: string;
  status: NodeStatus;
  health: string;
  openTunnels: number;
  lastHeartbeatAt: DateTime | null;
  /** Until when the token of its latest enrollment string works if unused (null once used). */
  enrollmentExpiresAt: DateTime | null;
  version: string | null;
  createdAt: DateTime;
  region: Pick<Region, 'id' | 'code' | 'name'> | null;
}

export interface Session {
  id: UUID;
  startedAt: DateTime;
  lastActivityAt: DateTime;
  endedAt: DateTime | null;
  endReason: string | null;
  bytesUp: BigIntString;
  bytesDown: BigIntString;
  device: (Pick<Device, 'id' | 'name'> & { user?: Pick<User, 'id' | 'email'> | null }) | null;
  outlineNode: (Pick<OutlineNode, 'id' | 'name'> & { region: Pick<Region, 'code'> | null }) | null;
  gatewayNode: Pick<GatewayNode, 'id' | 'name'> | null;
}

export interface UsagePoint {
  periodStart: DateTime;
  bytesUp: BigIntString;
  bytesDown: BigIntString;
}

export interface AuditEntry {
  id: UUID;
  actorUserId: UUID | null;
  action: string;
  targetType: string;
  targetId: UUID | null;
  details: string;
  createdAt: DateTime;
}

export type NodeKind = 'OUTLINE' | 'GATEWAY';
export type NodeEventKind =
  | 'REGISTERED'
  | 'UP'
  | 'DOWN'
  | 'DRAINING'
  | 'ACTIVE'
  | 'DISABLED'
  | 'LOAD'
  | 'UPDATED'
  | 'DELETED';

/** One event of `Live.nodeEvents`; `status` and `health` are lower case. */
export interface NodeEvent {
  nodeId: string;
  nodeKind: NodeKind;
  region: string;
  kind: NodeEventKind;
  status: string;
  health: string;
  load: number;
  capacity: number;
  at: DateTime;
}

/** `Query.settings`: what an admin changes at run time. */
export interface Settings {
  signUpEnabled: boolean;
}

export type SessionEventKind = 'OPENED' | 'CLOSED';

/** One event of `Live.sessionEvents` (admin). */
export interface SessionEvent {
  kind: SessionEventKind;
  sessionId: UUID;
  deviceId: UUID;
  userId: UUID;
  userEmail: string;
  /** Region code of the Outline node ("" when it has none). */
  region: string;
  outlineNodeId: UUID | null;
  gatewayNodeId: UUID | null;
  /** Why it closed (as `Session.endReason`); null when OPENED. */
  endReason: string | null;
  bytesUp: BigIntString;
  bytesDown: BigIntString;
  at: DateTime;
}

export type QuotaEventKind = 'QUOTA_REACHED' | 'PERIOD_RESET' | 'EXPIRED';

/** One event of `Live.quotaEvents` (admin). */
export interface QuotaEvent {
  kind: QuotaEventKind;
  subscriptionId: UUID;
  userId: UUID;
  userEmail: string;
  trafficLimitBytes: BigIntString | null;
  trafficUsedBytes: BigIntString;
  at: DateTime;
}

/** `Device.placement`: the device's open session, as its owner sees it. */
export interface DevicePlacement {
  sessionId: UUID;
  region: string;
  regionName: string;
  nodeId: UUID;
  nodeName: string;
  /** unknown, up or down. */
  nodeHealth: string;
  since: DateTime;
}

export type DeviceEventKind =
  | 'REVOKED'
  | 'ROTATED'
  | 'RENAMED'
  | 'SESSION_OPENED'
  | 'SESSION_CLOSED'
  | 'LIMIT_CHANGED';

/** One event of `Live.myDeviceEvents`. */
export interface DeviceEvent {
  kind: DeviceEventKind;
  deviceId: UUID;
  /** After the event: null when the device has no open session. */
  placement: DevicePlacement | null;
  at: DateTime;
}
