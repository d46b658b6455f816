// Operator: Outline nodes and gateways. Register (the machine token is shown
// once, with a copy button and the command that uses it), edit, drain,
// disable, re-activate, rotate the token, delete; status live from nodeEvents.

import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, GatewayNode, NodeStatus, Region } from '../../api/types';
import {
  Async,
  Button,
  ConfirmButton,
  Dialog,
  Empty,
  ErrorNote,
  Field,
  OnceValue,
  Page,
  Table,
  toast,
  useAction,
} from '../../ui/components';
import { ago } from '../../ui/format';
import { useNow, useQuery } from '../../ui/hooks';
import { AddressFields, EditButton } from './EditNode';
import { LoadCell, NodeState, useNodes } from './nodesModel';

const CIPHERS = ['chacha20-ietf-poly1305', 'aes-128-gcm', 'aes-256-gcm'];

function useRegions() {
  return useQuery((signal) => gql<{ regions: Connection<Region> }>(doc.REGIONS, { first: 100 }, signal), []);
}

/**
 * The last heartbeat; for a machine never heard from, whether its token
 * still works (an unused token expires at the end of the lifetime chosen
 * when it was issued).
 */
function Heartbeat(props: { at: string | null; expires: string | null; now: number }) {
  if (props.at || !props.expires) {
    return <td title={props.at ?? undefined}>{ago(props.at, props.now)}</td>;
  }
  const live = Date.parse(props.expires) > props.now;
  return (
    <td title={props.expires}>
      never
      {live ? (
        <div class="muted small">token expires in {within(Date.parse(props.expires) - props.now)}</div>
      ) : (
        <div class="small">
          <span class="badge warn">token expired: rotate it</span>
        </div>
      )}
    </td>
  );
}

/** A time left, to the nearest hour (minutes under an hour). */
function within(ms: number): string {
  const min = Math.max(1, Math.round(ms / 60_000));
  return min < 60 ? `${min} min` : `${Math.round(min / 60)} h`;
}

/** Longest lifetime of an unused machine token, in hours (30 days). */
const MAX_TTL_HOURS = 720;

/** Lifetime of a new machine token unless the operator picks another. */
const DEFAULT_TTL_HOURS = '24';

/** How long a new machine token works unused (1 to 720 hours). */
function TtlField(props: { value: string; onChange: (v: string) => void }) {
  return (
    <Field label="Token valid for (hours)" hint={`1 to ${MAX_TTL_HOURS}: a token not used by then expires.`}>
      {(id, hint) => (
        <input
          id={id}
          type="number"
          required
          min={1}
          max={MAX_TTL_HOURS}
          step={1}
          aria-describedby={hint}
          value={props.value}
          onInput={(e) => props.onChange(e.currentTarget.value)}
        />
      )}
    </Field>
  );
}

/** A new machine token as shown once, with its enrollment string when the control plane has a public URL. */
export interface Issued {
  title: string;
  token: string;
  /** The one-time enrollment string (control-plane URL, pin, token); null without BACKEND_PUBLIC_URL. */
  enrollment: string | null;
  kind: 'node' | 'gateway';
  hours: number;
  /** A gateway's public URL, for its command. */
  publicUrl?: string;
}

/**
 * The command that starts the machine: with the enrollment string, which
 * carries the control plane's URL and certificate pin, or else with the
 * token and this page's origin. Secrets go in the environment the relay
 * reads (NODE_ENROLL, GATEWAY_TOKEN, ...), not in arguments: arguments are
 * shown by `ps` to every user of the machine.
 */
export function startCommand(i: Issued): string {
  // The gateway listens on its URL's port unless something in front of it
  // maps another.
  const port = (i.publicUrl && URL.canParse(i.publicUrl) && new URL(i.publicUrl).port) || '443';
  const gateway = `--listen 0.0.0.0:${port} --cert gw.crt --key gw.key --public-url ${i.publicUrl ?? 'https://…'}`;
  if (i.enrollment) {
    return i.kind === 'node'
      ? `NODE_ENROLL='${i.enrollment}' httvps-relay node`
      : `GATEWAY_ENROLL='${i.enrollment}' httvps-relay gateway ${gateway}`;
  }
  const backend = location.origin;
  return i.kind === 'node'
    ? `NODE_TOKEN=${i.token} httvps-relay node --backend ${backend}`
    : `GATEWAY_TOKEN=${i.token} httvps-relay gateway --backend ${backend} ${gateway}`;
}

/** The machine token, shown once after registering or rotating. */
function TokenDialog(props: Issued & { onClose: () => void }) {
  return (
    <Dialog title={props.title} onClose={props.onClose} wide>
      <p class="note warn">
        This token is shown only now and is stored hashed. Copy it to the machine and start it within
        {` ${props.hours} h`}: a token not used by then expires. If it is lost or expired, rotate the token.
      </p>
      {props.enrollment && <OnceValue label="Enrollment string" value={props.enrollment} testId="enrollment" />}
      <OnceValue label="Machine token" value={props.token} testId="machine-token" />
      <OnceValue label="Command" value={startCommand(props)} testId="start-command" />
      <footer class="dialog-foot">
        <Button variant="primary" onClick={props.onClose}>
          Done
        </Button>
      </footer>
    </Dialog>
  );
}

function RegionSelect(props: { id: string; regions: Region[]; value: string; onChange: (v: string) => void }) {
  return (
    <select id={props.id} required value={props.value} onChange={(e) => props.onChange(e.currentTarget.value)}>
      <option value="" disabled>
        Choose a region
      </option>
      {props.regions.map((r) => (
        <option key={r.id} value={r.code}>
          {r.name} ({r.code})
        </option>
      ))}
    </select>
  );
}

/** What registering or rotating gives: the token, its enrollment string (when there is one), its lifetime. */
type OnIssued = (token: string, enrollment: string | null, hours: number) => void;

function RegisterNode(props: { regions: Region[]; onClose: () => void; onToken: OnIssued }) {
  const [region, setRegion] = useState(props.regions[0]?.code ?? '');
  const [name, setName] = useState('');
  const [host, setHost] = useState('');
  const [port, setPort] = useState('8388');
  const [capacity, setCapacity] = useState('1000');
  const [ownKey, setOwnKey] = useState(false);
  const [method, setMethod] = useState(CIPHERS[0]!);
  const [secret, setSecret] = useState('');
  const [ttl, setTtl] = useState(DEFAULT_TTL_HOURS);
  const act = useAction(async () => {
    const hours = Number(ttl);
    const input: Record<string, unknown> = {
      region,
      name: name.trim(),
      host: host.trim(),
      port: Number(port),
      capacity: Number(capacity),
      enrollmentTtlHours: hours,
    };
    if (ownKey) Object.assign(input, { method, secret });
    const d = await gql<{ registerOutlineNode: { token: string; enrollment: string | null } }>(doc.REGISTER_OUTLINE_NODE, {
      input,
    });
    props.onToken(d.registerOutlineNode.token, d.registerOutlineNode.enrollment, hours);
  });
  return (
    <Dialog title="Register an Outline node" onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Region">
          {(id) => <RegionSelect id={id} regions={props.regions} value={region} onChange={setRegion} />}
        </Field>
        <Field label="Name" hint="Unique, e.g. fra-1.">
          {(id, hint) => (
            <input id={id} required maxLength={100} aria-describedby={hint} value={name} onInput={(e) => setName(e.currentTarget.value)} />
          )}
        </Field>
        <AddressFields
          hostHint="Address the gateways reach it at."
          host={[host, setHost]}
          port={[port, setPort]}
          capacity={[capacity, setCapacity]}
        />
        <div class="field check">
          <label>
            <input type="checkbox" checked={ownKey} onChange={(e) => setOwnKey(e.currentTarget.checked)} /> Own
            Shadowsocks key (a stock server; a pool of one)
          </label>
        </div>
        {ownKey && (
          <>
            <Field label="Cipher">
              {(id) => (
                <select id={id} value={method} onChange={(e) => setMethod(e.currentTarget.value)}>
                  {CIPHERS.map((c) => (
                    <option key={c}>{c}</option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Password" hint="8 to 256 characters.">
              {(id, hint) => (
                <input id={id} required minLength={8} maxLength={256} aria-describedby={hint} value={secret} onInput={(e) => setSecret(e.currentTarget.value)} />
              )}
            </Field>
          </>
        )}
        <TtlField value={ttl} onChange={setTtl} />
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Register node
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

function RegisterGateway(props: {
  regions: Region[];
  onClose: () => void;
  onToken: (token: string, enrollment: string | null, hours: number, publicUrl: string) => void;
}) {
  const [region, setRegion] = useState(props.regions[0]?.code ?? '');
  const [name, setName] = useState('');
  const [url, setUrl] = useState('https://');
  const [ttl, setTtl] = useState(DEFAULT_TTL_HOURS);
  const act = useAction(async () => {
    const hours = Number(ttl);
    const d = await gql<{ registerGatewayNode: { token: string; enrollment: string | null; node: GatewayNode } }>(
      doc.REGISTER_GATEWAY_NODE,
      { input: { region, name: name.trim(), publicUrl: url.trim(), enrollmentTtlHours: hours } },
    );
    const r = d.registerGatewayNode;
    props.onToken(r.token, r.enrollment, hours, r.node.publicUrl);
  });
  return (
    <Dialog title="Register a gateway" onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Region">
          {(id) => <RegionSelect id={id} regions={props.regions} value={region} onChange={setRegion} />}
        </Field>
        <Field label="Name" hint="Unique, e.g. gw-fra-1.">
          {(id, hint) => (
            <input id={id} required maxLength={100} aria-describedby={hint} value={name} onInput={(e) => setName(e.currentTarget.value)} />
          )}
        </Field>
        <Field label="Public URL" hint="What clients connect to, e.g. https://gw1.example.com.">
          {(id, hint) => (
            <input id={id} type="url" required aria-describedby={hint} value={url} onInput={(e) => setUrl(e.currentTarget.value)} />
          )}
        </Field>
        <TtlField value={ttl} onChange={setTtl} />
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Register gateway
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

/** Edit / drain / disable / activate / rotate / delete, for either kind. */
function NodeActions(props: {
  node: { id: string; name: string; status: NodeStatus };
  kind: 'node' | 'gateway';
  changed: () => void;
  onToken: (title: string, token: string, enrollment: string | null, hours: number) => void;
  /** Rendered first (the row's "Edit"). */
  children?: ComponentChildren;
}) {
  const { node } = props;
  const [ttl, setTtl] = useState(DEFAULT_TTL_HOURS);
  const setStatus = (status: NodeStatus) => async () => {
    await gql(doc.SET_NODE_STATUS, { id: node.id, status });
    toast(`${node.name}: ${status.toLowerCase()}`);
  };
  return (
    <span class="row-actions">
      {props.children}
      {node.status !== 'ACTIVE' && (
        <ConfirmButton
          small
          label="Activate"
          title={`Activate ${node.name}?`}
          body="It takes new sessions again."
          action={setStatus('ACTIVE')}
          done={props.changed}
        />
      )}
      {node.status === 'ACTIVE' && (
        <ConfirmButton
          small
          label="Drain"
          title={`Drain ${node.name}?`}
          body="Open sessions stay; new ones go elsewhere."
          action={setStatus('DRAINING')}
          done={props.changed}
        />
      )}
      {node.status !== 'DISABLED' && (
        <ConfirmButton
          small
          label="Disable"
          title={`Disable ${node.name}?`}
          body="It is taken out of service."
          action={setStatus('DISABLED')}
          done={props.changed}
        />
      )}
      <ConfirmButton
        small
        label="Rotate token"
        title={`New token for ${node.name}?`}
        body={
          <>
            <p>The current token stops working at once: the machine must be given the new one.</p>
            <TtlField value={ttl} onChange={setTtl} />
          </>
        }
        action={async () => {
          const hours = Number(ttl);
          const d = await gql<{ rotateNodeEnrollment: { token: string; enrollment: string | null } }>(
            doc.ROTATE_NODE_ENROLLMENT,
            { id: node.id, enrollmentTtlHours: hours },
          );
          const r = d.rotateNodeEnrollment;
          props.onToken(`New token for ${node.name}`, r.token, r.enrollment, hours);
        }}
        done={props.changed}
      />
      <ConfirmButton
        small
        variant="danger"
        label="Delete"
        title={`Delete ${node.name}?`}
        body="It is removed from the registry and its token stops working; sessions keep their history."
        action={async () => {
          await gql(doc.DELETE_NODE, { id: node.id });
          toast(`${node.name} deleted`);
        }}
        done={props.changed}
      />
    </span>
  );
}

export function Nodes() {
  const now = useNow(1000);
  const nodes = useNodes();
  const regions = useRegions();
  const [dialog, setDialog] = useState<'node' | 'gateway' | null>(null);
  const [token, setToken] = useState<Issued | null>(null);
  const regionList = regions.data?.regions.nodes ?? [];

  return (
    <Page
      title="Nodes and gateways"
      actions={
        <>
          <Button variant="primary" disabled={!regionList.length} onClick={() => setDialog('node')}>
            Register node
          </Button>
          <Button disabled={!regionList.length} onClick={() => setDialog('gateway')}>
            Register gateway
          </Button>
        </>
      }
    >
      {regions.data && !regionList.length && (
        <p class="note info">Create a region first: nodes and gateways belong to one.</p>
      )}
      <section class="card" aria-labelledby="outline-title">
        <h2 id="outline-title">Outline nodes</h2>
        <Async q={nodes}>
          {(d) =>
            d.outline.length === 0 ? (
              <Empty>No Outline nodes registered.</Empty>
            ) : (
              <Table
                label="Outline nodes"
                head={['Node', 'Region', 'Address', 'Status', 'Load', 'Last heartbeat', 'Key', '']}
              >
                {d.outline.map((n) => (
                  <tr key={n.id} data-node-id={n.id}>
                    <th scope="row">
                      {n.name}
                      {n.version && <div class="muted small">v{n.version}</div>}
                    </th>
                    <td>{n.region?.code ?? '—'}</td>
                    <td class="mono">
                      {n.host}:{n.port}
                    </td>
                    <td class="node-status">
                      <NodeState status={n.status} health={n.health} />
                    </td>
                    <td>
                      <LoadCell load={n.load} capacity={n.capacity} />
                    </td>
                    <Heartbeat at={n.lastHeartbeatAt} expires={n.enrollmentExpiresAt} now={now} />
                    <td>
                      {n.usesPoolKey ? 'pool' : 'own'} <span class="muted small">{n.method}</span>
                    </td>
                    <td>
                      <NodeActions
                        node={n}
                        kind="node"
                        changed={nodes.reload}
                        onToken={(title, t, enrollment, hours) => setToken({ title, token: t, enrollment, kind: 'node', hours })}
                      >
                        <EditButton kind="node" node={n} done={nodes.reload} />
                      </NodeActions>
                    </td>
                  </tr>
                ))}
              </Table>
            )
          }
        </Async>
      </section>
      <section class="card" aria-labelledby="gateways-title">
        <h2 id="gateways-title">Gateways</h2>
        <Async q={nodes}>
          {(d) =>
            d.gateways.length === 0 ? (
              <Empty>No gateways registered. Devices get links once there is one.</Empty>
            ) : (
              <Table
                label="Gateways"
                head={['Gateway', 'Region', 'Public URL', 'Status', 'Open tunnels', 'Last heartbeat', '']}
              >
                {d.gateways.map((g: GatewayNode) => (
                  <tr key={g.id} data-node-id={g.id}>
                    <th scope="row">
                      {g.name}
                      {g.version && <div class="muted small">v{g.version}</div>}
                    </th>
                    <td>{g.region?.code ?? '—'}</td>
                    <td class="mono">{g.publicUrl}</td>
                    <td class="node-status">
                      <NodeState status={g.status} health={g.health} />
                    </td>
                    <td>{g.openTunnels}</td>
                    <Heartbeat at={g.lastHeartbeatAt} expires={g.enrollmentExpiresAt} now={now} />
                    <td>
                      <NodeActions
                        node={g}
                        kind="gateway"
                        changed={nodes.reload}
                        onToken={(title, t, enrollment, hours) =>
                          setToken({ title, token: t, enrollment, kind: 'gateway', hours, publicUrl: g.publicUrl })
                        }
                      >
                        <EditButton kind="gateway" node={g} done={nodes.reload} />
                      </NodeActions>
                    </td>
                  </tr>
                ))}
              </Table>
            )
          }
        </Async>
      </section>
      {nodes.data?.truncated && <p class="muted">Showing the first 100 of each kind.</p>}
      {dialog === 'node' && (
        <RegisterNode
          regions={regionList}
          onClose={() => setDialog(null)}
          onToken={(t, enrollment, hours) => {
            setDialog(null);
            setToken({ title: 'Node registered', token: t, enrollment, kind: 'node', hours });
            nodes.reload();
          }}
        />
      )}
      {dialog === 'gateway' && (
        <RegisterGateway
          regions={regionList}
          onClose={() => setDialog(null)}
          onToken={(t, enrollment, hours, publicUrl) => {
            setDialog(null);
            setToken({ title: 'Gateway registered', token: t, enrollment, kind: 'gateway', hours, publicUrl });
            nodes.reload();
          }}
        />
      )}
      {token && <TokenDialog {...token} onClose={() => setToken(null)} />}
    </Page>
  );
}
