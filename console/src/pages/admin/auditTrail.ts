// A user's audit trail from the current API: the log can be filtered by
// action and actor but not by target (proposed: AuditFilterInput.targetId),
// so the actions that concern an account are read per action, a bounded
// number of pages each, and kept when they name the user, one of its
// subscriptions or one of its devices.

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { AuditEntry, Connection } from '../../api/types';

/** Actions whose target is an account, a subscription or a device. */
const ACTIONS = [
  'set_user_status',
  'set_user_role',
  'grant_subscription',
  'extend_subscription',
  'cancel_subscription',
  'revoke_device',
  'rotate_device_token',
];
const PAGES_PER_QUERY = 5;

async function scan(filter: Record<string, string>, signal: AbortSignal) {
  const out: AuditEntry[] = [];
  let after: string | null = null;
  for (let i = 0; i < PAGES_PER_QUERY; i++) {
    const d: { auditLog: Connection<AuditEntry> } = await gql(doc.AUDIT_LOG, { filter, first: 100, after }, signal);
    out.push(...d.auditLog.nodes);
    if (!d.auditLog.pageInfo.hasNextPage) return { entries: out, complete: true };
    after = d.auditLog.pageInfo.endCursor;
  }
  return { entries: out, complete: false };
}

export async function auditTrail(
  user: { id: string; role: string },
  related: Set<string>,
  signal: AbortSignal,
): Promise<{ entries: AuditEntry[]; complete: boolean }> {
  const queries = ACTIONS.map((action) => scan({ action }, signal));
  if (user.role === 'ADMIN') queries.push(scan({ actorUserId: user.id }, signal));
  const results = await Promise.all(queries);
  const seen = new Map<string, AuditEntry>();
  for (const r of results) {
    for (const e of r.entries) {
      const about = e.targetId != null && (e.targetId === user.id || related.has(e.targetId));
      if (about || e.actorUserId === user.id) seen.set(e.id, e);
    }
  }
  const entries = [...seen.values()].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  return { entries, complete: results.every((r) => r.complete) };
}
