// Operator overview: nodes per region with live status, gateways and their
// health, open sessions, a live feed of sessions and quota events, traffic
// of the last 24 hours and 30 days.

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, OutlineNode, Region } from '../../api/types';
import { Async, Empty, Link, Page, Table } from '../../ui/components';
import { ago } from '../../ui/format';
import { useNow, usePoll, useQuery } from '../../ui/hooks';
import { UsageCharts } from '../../ui/usage';
import { AdminActivity } from './activity';
import { LoadCell, NodeState, useNodes } from './nodesModel';

function RegionNodes(props: { region: Pick<Region, 'code' | 'name'>; nodes: OutlineNode[]; now: number }) {
  const up = props.nodes.filter((n) => n.status === 'ACTIVE' && n.health === 'up').length;
  return (
    <section class="card region" aria-labelledby={`region-${props.region.code}`}>
      <header class="region-head">
        <h3 id={`region-${props.region.code}`}>
          {props.region.name} <span class="muted mono">{props.region.code}</span>
        </h3>
        <span class="muted">
          {up} of {props.nodes.length} taking sessions
        </span>
      </header>
      {props.nodes.length === 0 ? (
        <Empty>
          No nodes in this region. <Link to="/nodes">Register one</Link>.
        </Empty>
      ) : (
        <Table label={`Nodes of ${props.region.name}`} head={['Node', 'Status', 'Load', 'Last heartbeat']}>
          {props.nodes.map((n) => (
            <tr key={n.id} data-node-id={n.id}>
              <th scope="row">{n.name}</th>
              <td class="node-status">
                <NodeState status={n.status} health={n.health} />
              </td>
              <td>
                <LoadCell load={n.load} capacity={n.capacity} />
              </td>
              <td title={n.lastHeartbeatAt ?? undefined}>{ago(n.lastHeartbeatAt, props.now)}</td>
            </tr>
          ))}
        </Table>
      )}
    </section>
  );
}

export function Overview() {
  const now = useNow(1000);
  const nodes = useNodes();
  const regions = useQuery(
    (signal) => gql<{ regions: Connection<Region> }>(doc.REGIONS, { first: 100 }, signal),
    [],
  );
  const open = useQuery(
    (signal) => gql<{ sessions: { totalCount: number } }>(doc.SESSION_COUNT, { filter: { open: true } }, signal),
    [],
  );
  // Session events refresh the count; this catches up after a drop.
  usePoll(open.reload, 60_000);

  return (
    <Page title="Overview">
      <div class="stats">
        <Async q={open}>
          {(d) => (
            <Link to="/sessions" class="stat">
              <span class="stat-value" data-testid="open-sessions">
                {d.sessions.totalCount}
              </span>
              <span class="stat-label">open sessions</span>
            </Link>
          )}
        </Async>
        <Async q={nodes}>
          {(d) => (
            <>
              <Link to="/nodes" class="stat">
                <span class="stat-value">
                  {d.outline.filter((n) => n.status === 'ACTIVE' && n.health === 'up').length} /{' '}
                  {d.outline.length}
                </span>
                <span class="stat-label">nodes up</span>
              </Link>
              <Link to="/nodes" class="stat">
                <span class="stat-value">
                  {d.gateways.filter((n) => n.status === 'ACTIVE' && n.health === 'up').length} /{' '}
                  {d.gateways.length}
                </span>
                <span class="stat-label">gateways up</span>
              </Link>
            </>
          )}
        </Async>
      </div>

      <AdminActivity onSessionChange={open.reload} />

      <section aria-labelledby="nodes-title">
        <h2 id="nodes-title">Nodes by region</h2>
        <Async q={nodes}>
          {(d) => (
            <Async q={regions}>
              {(r) => {
                const known = new Set(r.regions.nodes.map((x) => x.code));
                const orphans = d.outline.filter((n) => !n.region || !known.has(n.region.code));
                if (r.regions.nodes.length === 0) {
                  return (
                    <Empty>
                      No regions yet. <Link to="/regions">Create a region</Link>, then register its nodes.
                    </Empty>
                  );
                }
                return (
                  <div class="regions">
                    {r.regions.nodes.map((reg) => (
                      <RegionNodes
                        key={reg.id}
                        region={reg}
                        now={now}
                        nodes={d.outline.filter((n) => n.region?.code === reg.code)}
                      />
                    ))}
                    {orphans.length > 0 && (
                      <RegionNodes region={{ code: '?', name: 'Other' }} nodes={orphans} now={now} />
                    )}
                  </div>
                );
              }}
            </Async>
          )}
        </Async>
      </section>

      <section class="card" aria-labelledby="gw-title">
        <h2 id="gw-title">Gateways</h2>
        <Async q={nodes}>
          {(d) =>
            d.gateways.length === 0 ? (
              <Empty>
                No gateways. Clients need one: <Link to="/nodes">register a gateway</Link>.
              </Empty>
            ) : (
              <Table label="Gateways" head={['Gateway', 'Region', 'Status', 'Open tunnels', 'Last heartbeat']}>
                {d.gateways.map((g) => (
                  <tr key={g.id} data-node-id={g.id}>
                    <th scope="row">
                      {g.name}
                      <div class="muted mono small">{g.publicUrl}</div>
                    </th>
                    <td>{g.region?.code ?? '—'}</td>
                    <td class="node-status">
                      <NodeState status={g.status} health={g.health} />
                    </td>
                    <td>{g.openTunnels}</td>
                    <td title={g.lastHeartbeatAt ?? undefined}>{ago(g.lastHeartbeatAt, now)}</td>
                  </tr>
                ))}
              </Table>
            )
          }
        </Async>
      </section>

      <section class="card" aria-labelledby="traffic-title">
        <h2 id="traffic-title">Traffic, all users</h2>
        <UsageCharts />
      </section>
    </Page>
  );
}
