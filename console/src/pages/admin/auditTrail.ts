// A user's audit trail: the entries about the account, its subscriptions
// and its devices (the audit log filtered by `targetId`, newest first), and,
// for an admin, the entries it made (filtered by `actorUserId`).

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { AuditEntry, CountedConnection } from '../../api/types';

/** Entries read per target: the trail shows the newest. */
const PER_QUERY = 50;

async function newest(filter: Record<string, string>, signal: AbortSignal) {
  const d: { auditLog: CountedConnection<AuditEntry> } = await gql(
    doc.AUDIT_LOG,
    { filter, first: PER_QUERY, order: 'NEWEST_FIRST' },
    signal,
  );
  return { entries: d.auditLog.nodes, complete: !d.auditLog.pageInfo.hasNextPage };
}

export async function auditTrail(
  user: { id: string; role: string },
  related: Set<string>,
  signal: AbortSignal,
): Promise<{ entries: AuditEntry[]; complete: boolean }> {
  const queries = [user.id, ...related].map((targetId) => newest({ targetId }, signal));
  if (user.role === 'ADMIN') queries.push(newest({ actorUserId: user.id }, signal));
  const results = await Promise.all(queries);
  const seen = new Map<string, AuditEntry>();
  for (const r of results) for (const e of r.entries) seen.set(e.id, e);
  const entries = [...seen.values()].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  return { entries, complete: results.every((r) => r.complete) };
}
