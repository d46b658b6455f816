// Outline nodes and gateways as the operator sees them, kept live from
// `nodeEvents`: status, health, load and heartbeats change in place without
// a reload; registrations, changes and deletions re-read the lists; so does a
// reconnect of the live socket (events sent while it was down are gone).
// Heartbeats that change nothing are not events, so the lists are also
// re-read every few seconds to keep "last heartbeat" honest.

import { useRef } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, GatewayNode, NodeEvent, NodeStatus, OutlineNode } from '../../api/types';
import { Badge } from '../../ui/components';
import { useLive, usePoll, useQuery } from '../../ui/hooks';

export interface Nodes {
  outline: OutlineNode[];
  gateways: GatewayNode[];
  /** Whether either list has more than one page (100 rows). */
  truncated: boolean;
}

const FIRST = 100;
/** How often the lists are re-read besides the events. */
const REREAD_MS = 10_000;

function patchStatus(s: string): NodeStatus {
  const up = s.toUpperCase();
  return up === 'DRAINING' || up === 'DISABLED' ? up : 'ACTIVE';
}

/** Applies one event to the lists; returns null when they must be re-read. */
export function applyNodeEvent(nodes: Nodes, ev: NodeEvent): Nodes | null {
  if (ev.kind === 'REGISTERED' || ev.kind === 'UPDATED' || ev.kind === 'DELETED') return null;
  const beat = ev.kind === 'UP' || ev.kind === 'LOAD';
  if (ev.nodeKind === 'OUTLINE') {
    if (!nodes.outline.some((n) => n.id === ev.nodeId)) return null;
    return {
      ...nodes,
      outline: nodes.outline.map((n) =>
        n.id === ev.nodeId
          ? {
              ...n,
              status: patchStatus(ev.status),
              health: ev.health,
              load: ev.load,
              capacity: ev.capacity || n.capacity,
              lastHeartbeatAt: beat ? ev.at : n.lastHeartbeatAt,
            }
          : n,
      ),
    };
  }
  if (!nodes.gateways.some((n) => n.id === ev.nodeId)) return null;
  return {
    ...nodes,
    gateways: nodes.gateways.map((n) =>
      n.id === ev.nodeId
        ? {
            ...n,
            status: patchStatus(ev.status),
            health: ev.health,
            openTunnels: ev.load,
            lastHeartbeatAt: beat ? ev.at : n.lastHeartbeatAt,
          }
        : n,
    ),
  };
}

/** Both node lists, live. */
export function useNodes() {
  const q = useQuery(async (signal) => {
    const [o, g] = await Promise.all([
      gql<{ outlineNodes: Connection<OutlineNode> }>(doc.OUTLINE_NODES, { first: FIRST }, signal),
      gql<{ gatewayNodes: Connection<GatewayNode> }>(doc.GATEWAY_NODES, { first: FIRST }, signal),
    ]);
    return {
      outline: o.outlineNodes.nodes,
      gateways: g.gatewayNodes.nodes,
      truncated: o.outlineNodes.pageInfo.hasNextPage || g.gatewayNodes.pageInfo.hasNextPage,
    } satisfies Nodes;
  }, []);
  const latest = useRef(q.data);
  latest.current = q.data;
  useLive<{ nodeEvents: NodeEvent }>(
    doc.NODE_EVENTS,
    {},
    ({ nodeEvents: ev }) => {
      // Events can come faster than renders: apply each to the latest lists.
      const old = latest.current;
      if (!old) return q.reload(); // still loading: read again after it
      const next = applyNodeEvent(old, ev);
      if (!next) return q.reload();
      latest.current = next;
      q.setData(() => next);
    },
    { onReconnect: q.reload },
  );
  usePoll(q.reload, REREAD_MS);
  return q;
}

/** What an operator reads first: disabled, draining, or the health. */
export function NodeState(props: { status: NodeStatus; health: string }) {
  if (props.status === 'DISABLED') return <Badge tone="muted">disabled</Badge>;
  const health =
    props.health === 'up' ? (
      <Badge tone="ok">up</Badge>
    ) : props.health === 'down' ? (
      <Badge tone="bad">down</Badge>
    ) : (
      <Badge tone="muted">unknown</Badge>
    );
  if (props.status === 'DRAINING') {
    return (
      <span class="node-state">
        <Badge tone="warn">draining</Badge> {health}
      </span>
    );
  }
  return <span class="node-state">{health}</span>;
}

export function LoadCell(props: { load: number; capacity: number }) {
  const share = props.capacity > 0 ? Math.min(1, props.load / props.capacity) : 0;
  const tone = share >= 0.9 ? 'bad' : share >= 0.7 ? 'warn' : 'ok';
  return (
    <span class="load">
      <span
        class="bar small"
        role="meter"
        aria-label="Load"
        aria-valuemin={0}
        aria-valuemax={props.capacity}
        aria-valuenow={props.load}
      >
        <span class={`fill ${tone}`} style={{ width: `${(share * 100).toFixed(1)}%` }} />
      </span>
      {props.load} / {props.capacity}
    </span>
  );
}
