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

/** Bytes in a GB (decimal, as `bytes()` shows them). */
const GB = 1_000_000_000n;

/** The largest count a BigInt holds (2^63 - 1): the largest allowance in bytes. */
const MAX_BIGINT = 9_223_372_036_854_775_807n;

/**
 * A number typed in a form ("12.5", "1e3") as an exact count of units of
 * 10^-`scale` ("12.5" at scale 9 is 12500000000n), digits past a unit
 * rounded half up; undefined when it is not a number of 0 or more. No
 * float on the way: every byte typed is the byte sent.
 */
function decimalUnits(text: string, scale: number): bigint | undefined {
  const m = /^(\d*)(?:\.(\d*))?(?:e([+-]?\d+))?$/i.exec(text.trim());
  if (!m || !(m[1] || m[2])) return undefined;
  const fraction = m[2] ?? '';
  const digits = BigInt(`${m[1]}${fraction}`);
  // (An exponent past 400 says as much as 400: far too large, or 0.)
  const shift = scale - fraction.length + Math.max(-400, Math.min(400, Number(m[3] ?? 0)));
  if (shift >= 0) return digits * 10n ** BigInt(shift);
  const unit = 10n ** BigInt(-shift);
  return (digits + unit / 2n) / unit;
}

/** An exact count of units of 10^-`scale` as a decimal: (12500000000, 9) -> "12.5". */
function unitsToDecimal(units: string, scale: number, minFraction = 0): string {
  const n = BigInt(units);
  const one = 10n ** BigInt(scale);
  const fraction = (n % one).toString().padStart(scale, '0').replace(/0+$/, '').padEnd(minFraction, '0');
  return fraction ? `${n / one}.${fraction}` : String(n / one);
}

/** Bytes -> GB as typed in the forms, exactly: "123456789012345678" -> "123456789.012345678". */
export function bytesToGb(bytes: string): string {
  return unitsToDecimal(bytes, 9);
}

/** "12.5" (GB) -> bytes as a decimal string, exactly; "" -> null (unlimited). */
export function gbToBytes(gb: string): string | null {
  if (!gb.trim()) return null;
  const n = decimalUnits(gb, 9);
  if (n === undefined) throw new ApiError('INVALID', 'the traffic allowance must be a number of GB, 0 or more');
  if (n > MAX_BIGINT) {
    throw new ApiError('INVALID', `the traffic allowance is too large: at most ${(MAX_BIGINT / GB).toLocaleString('en-US')} GB`);
  }
  return n.toString();
}

function priceToCents(price: string): string {
  const n = decimalUnits(price.trim() || '0', 2);
  if (n === undefined) throw new ApiError('INVALID', 'the price must be 0 or more');
  if (n > MAX_BIGINT) throw new ApiError('INVALID', 'the price is too large');
  return n.toString();
}

/** `value()` when the field was changed from what was read; undefined (not sent) when not. */
function ifChanged<T>(typed: string, read: string, value: () => T): T | undefined {
  return typed === read ? undefined : value();
}

function PlanForm(props: { plan?: Plan; onClose: () => void; onSaved: () => void }) {
  const p = props.plan;
  // The fields as read: one left as it was is not sent, so it stays exactly so.
  const initial = {
    name: p?.name ?? '',
    price: p ? unitsToDecimal(p.priceCents, 2, 2) : '0.00',
    days: String(p?.durationDays ?? 30),
    traffic: p?.trafficLimitBytes ? bytesToGb(p.trafficLimitBytes) : '',
    devices: String(p?.deviceLimit ?? 3),
  };
  const [name, setName] = useState(initial.name);
  const [price, setPrice] = useState(initial.price);
  const [currency, setCurrency] = useState(p?.currency ?? 'USD');
  const [days, setDays] = useState(initial.days);
  const [traffic, setTraffic] = useState(initial.traffic);
  const [devices, setDevices] = useState(initial.devices);
  const [reset, setReset] = useState<ResetPeriod>(p?.resetPeriod ?? 'NONE');
  const act = useAction(async () => {
    if (p) {
      await gql(doc.UPDATE_PLAN, {
        id: p.id,
        input: {
          name: ifChanged(name.trim(), initial.name, () => name.trim()),
          priceCents: ifChanged(price, initial.price, () => priceToCents(price)),
          durationDays: ifChanged(days, initial.days, () => Number(days)),
          trafficLimitBytes: ifChanged(traffic, initial.traffic, () => gbToBytes(traffic)),
          deviceLimit: ifChanged(devices, initial.devices, () => Number(devices)),
        },
      });
      toast(`Plan “${name.trim()}” saved`);
    } else {
      await gql(doc.CREATE_PLAN, {
        input: {
          name: name.trim(),
          priceCents: priceToCents(price),
          currency: currency.trim().toUpperCase(),
          durationDays: Number(days),
          trafficLimitBytes: gbToBytes(traffic),
          deviceLimit: Number(devices),
          resetPeriod: reset,
        },
      });
      toast(`Plan “${name.trim()}” created`);
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
