// Operator: the plan catalogue. Create, edit, archive.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { ApiError } from '../../api/errors';
import { gql } from '../../api/graphql';
import type { Connection, Plan, ResetPeriod } from '../../api/types';
import {
  Async,
  Badge,
  Button,
  ConfirmButton,
  Dialog,
  Empty,
  ErrorNote,
  Field,
  Page,
  PagerBar,
  Table,
  toast,
  useAction,
} from '../../ui/components';
import { bytes, money } from '../../ui/format';
import { usePager, useQuery } from '../../ui/hooks';

export const GB = 1_000_000_000;

/** "12.5" (GB) -> bytes as a decimal string; "" -> null (unlimited). */
export function gbToBytes(gb: string): string | null {
  const t = gb.trim();
  if (!t) return null;
  const n = Number(t);
  if (!Number.isFinite(n) || n < 0) throw new ApiError('BAD_REQUEST', 'the traffic allowance must be a positive number of GB');
  return BigInt(Math.round(n * GB)).toString();
}

function priceToCents(price: string): string {
  const n = Number(price.trim() || '0');
  if (!Number.isFinite(n) || n < 0) throw new ApiError('BAD_REQUEST', 'the price must be 0 or more');
  return String(Math.round(n * 100));
}

function PlanForm(props: { plan?: Plan; onClose: () => void; onSaved: () => void }) {
  const p = props.plan;
  const [name, setName] = useState(p?.name ?? '');
  const [price, setPrice] = useState(p ? (Number(p.priceCents) / 100).toFixed(2) : '0.00');
  const [currency, setCurrency] = useState(p?.currency ?? 'USD');
  const [days, setDays] = useState(String(p?.durationDays ?? 30));
  const [traffic, setTraffic] = useState(p?.trafficLimitBytes ? String(Number(p.trafficLimitBytes) / GB) : '');
  const [devices, setDevices] = useState(String(p?.deviceLimit ?? 3));
  const [reset, setReset] = useState<ResetPeriod>(p?.resetPeriod ?? 'NONE');
  const act = useAction(async () => {
    const common = {
      name: name.trim(),
      priceCents: priceToCents(price),
      durationDays: Number(days),
      trafficLimitBytes: gbToBytes(traffic),
      deviceLimit: Number(devices),
    };
    if (p) {
      await gql(doc.UPDATE_PLAN, { id: p.id, input: common });
      toast(`Plan “${common.name}” saved`);
    } else {
      await gql(doc.CREATE_PLAN, { input: { ...common, currency: currency.trim().toUpperCase(), resetPeriod: reset } });
      toast(`Plan “${common.name}” created`);
    }
    props.onSaved();
  });
  return (
    <Dialog title={p ? `Edit “${p.name}”` : 'New plan'} onClose={props.onClose}>
      {p && <p class="muted">Running subscriptions keep the terms they were granted with.</p>}
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Name">
          {(id) => <input id={id} required maxLength={100} value={name} onInput={(e) => setName(e.currentTarget.value)} />}
        </Field>
        <Field label="Price">
          {(id) => (
            <input id={id} type="number" min={0} step="0.01" required value={price} onInput={(e) => setPrice(e.currentTarget.value)} />
          )}
        </Field>
        {!p && (
          <Field label="Currency" hint="Three letters, e.g. USD.">
            {(id, hint) => (
              <input id={id} required pattern="[A-Za-z]{3}" maxLength={3} aria-describedby={hint} value={currency} onInput={(e) => setCurrency(e.currentTarget.value)} />
            )}
          </Field>
        )}
        <Field label="Duration (days)">
          {(id) => (
            <input id={id} type="number" min={1} max={3660} required value={days} onInput={(e) => setDays(e.currentTarget.value)} />
          )}
        </Field>
        <Field label="Traffic allowance (GB)" hint="Empty for unlimited.">
          {(id, hint) => (
            <input id={id} type="number" min={0} step="any" aria-describedby={hint} value={traffic} onInput={(e) => setTraffic(e.currentTarget.value)} />
          )}
        </Field>
        <Field label="Devices">
          {(id) => (
            <input id={id} type="number" min={1} max={1000} required value={devices} onInput={(e) => setDevices(e.currentTarget.value)} />
          )}
        </Field>
        {!p && (
          <Field label="Allowance starts over">
            {(id) => (
              <select id={id} value={reset} onChange={(e) => setReset(e.currentTarget.value as ResetPeriod)}>
                <option value="NONE">never (covers the whole subscription)</option>
                <option value="MONTHLY">every 30 days</option>
              </select>
            )}
          </Field>
        )}
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            {p ? 'Save plan' : 'Create plan'}
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

export function Plans() {
  const [archived, setArchived] = useState(false);
  const [editing, setEditing] = useState<Plan | 'new' | null>(null);
  const pager = usePager();
  const q = useQuery(
    (signal) =>
      gql<{ plans: Connection<Plan> }>(doc.PLANS, { includeArchived: archived, first: 50, after: pager.after }, signal),
    [archived, pager.after],
  );
  return (
    <Page
      title="Plans"
      actions={
        <Button variant="primary" onClick={() => setEditing('new')}>
          New plan
        </Button>
      }
    >
      <div class="filters">
        <label class="check">
          <input
            type="checkbox"
            checked={archived}
            onChange={(e) => {
              setArchived(e.currentTarget.checked);
              pager.reset();
            }}
          />{' '}
          Show archived plans
        </label>
      </div>
      <Async q={q}>
        {(d) =>
          d.plans.nodes.length === 0 ? (
            <Empty>No plans yet. Create one, then grant it to users.</Empty>
          ) : (
            <>
              <Table label="Plans" head={['Plan', 'Price', 'Duration', 'Traffic', 'Devices', 'Resets', '']}>
                {d.plans.nodes.map((p) => (
                  <tr key={p.id}>
                    <th scope="row">
                      {p.name} {p.archived && <Badge tone="muted">archived</Badge>}
                    </th>
                    <td>{money(p.priceCents, p.currency)}</td>
                    <td>{p.durationDays} days</td>
                    <td>{p.trafficLimitBytes ? bytes(p.trafficLimitBytes) : 'unlimited'}</td>
                    <td>{p.deviceLimit}</td>
                    <td>{p.resetPeriod === 'MONTHLY' ? 'every 30 days' : 'never'}</td>
                    <td class="row-actions">
                      <Button small onClick={() => setEditing(p)}>
                        Edit
                      </Button>
                      {!p.archived && (
                        <ConfirmButton
                          small
                          variant="danger"
                          label="Archive"
                          title={`Archive “${p.name}”?`}
                          body="It can no longer be granted; running subscriptions continue."
                          action={() => gql(doc.ARCHIVE_PLAN, { id: p.id })}
                          done={q.reload}
                        />
                      )}
                    </td>
                  </tr>
                ))}
              </Table>
              <PagerBar
                page={pager.page}
                hasNext={d.plans.pageInfo.hasNextPage}
                onNext={() => pager.next(d.plans.pageInfo.endCursor)}
                onPrevious={pager.previous}
              />
            </>
          )
        }
      </Async>
      {editing && (
        <PlanForm
          plan={editing === 'new' ? undefined : editing}
          onClose={() => setEditing(null)}
          onSaved={() => {
            setEditing(null);
            q.reload();
          }}
        />
      )}
    </Page>
  );
}
