// Granting, extending and cancelling subscriptions (the billing record), one
// subscription's traffic (its allowance, a new period) and its plan (changed
// in place), used by the subscriptions page and a user's page.

import { useEffect, useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { ApiError } from '../../api/errors';
import { gql } from '../../api/graphql';
import type { Connection, Plan, Subscription, User } from '../../api/types';
import { Button, ConfirmButton, Dialog, ErrorNote, Field, toast, useAction } from '../../ui/components';
import { bytes, money } from '../../ui/format';
import { useQuery } from '../../ui/hooks';
import { bytesToGb, gbToBytes } from './Plans';

/** Email field that suggests matching accounts and resolves to one. */
function useUserSearch(text: string) {
  const [matches, setMatches] = useState<User[]>([]);
  useEffect(() => {
    const t = text.trim();
    if (t.length < 2) return setMatches([]);
    const ctl = new AbortController();
    const timer = setTimeout(() => {
      gql<{ users: Connection<User> }>(doc.USERS, { filter: { emailContains: t }, first: 10 }, ctl.signal).then(
        (d) => setMatches(d.users.nodes),
        () => undefined,
      );
    }, 200);
    return () => {
      clearTimeout(timer);
      ctl.abort();
    };
  }, [text]);
  return matches;
}

/** The plans that take new subscribers, and the one chosen (`initial`, else the first). */
function usePlanChoice(initial: string) {
  const [planId, setPlanId] = useState(initial);
  const plans = useQuery(
    (signal) => gql<{ plans: Connection<Plan> }>(doc.PLANS, { includeArchived: false, first: 100 }, signal),
    [],
  );
  const list = plans.data?.plans.nodes ?? [];
  useEffect(() => {
    if (!planId && list[0]) setPlanId(list[0].id);
  }, [list.length]);
  return { planId, setPlanId, list, error: plans.error, chosen: list.find((p) => p.id === planId) };
}

/** A select of `choice`'s plans, each shown as `describe` says. */
function PlanSelect(props: { id: string; choice: ReturnType<typeof usePlanChoice>; describe: (p: Plan) => string }) {
  const { choice } = props;
  return (
    <select id={props.id} required value={choice.planId} onChange={(e) => choice.setPlanId(e.currentTarget.value)}>
      {choice.list.length === 0 && <option value="">No plans: create one first</option>}
      {choice.list.map((p) => (
        <option key={p.id} value={p.id}>
          {props.describe(p)}
        </option>
      ))}
    </select>
  );
}

export function GrantDialog(props: { user?: Pick<User, 'id' | 'email'>; onClose: () => void; onGranted: () => void }) {
  const [email, setEmail] = useState(props.user?.email ?? '');
  const matches = useUserSearch(props.user ? '' : email);
  const choice = usePlanChoice('');
  const act = useAction(async () => {
    let userId = props.user?.id;
    if (!userId) {
      const wanted = email.trim();
      const d = await gql<{ users: Connection<User> }>(doc.USER_BY_EMAIL, { email: wanted });
      const found = d.users.nodes[0];
      if (!found) throw new ApiError('INVALID', `no account with the email ${wanted}`);
      userId = found.id;
    }
    await gql(doc.GRANT, { userId, planId: choice.planId });
    toast(`${choice.chosen?.name ?? 'Plan'} granted to ${email.trim()}`);
    props.onGranted();
  });
  return (
    <Dialog title={props.user ? `Grant a plan to ${props.user.email}` : 'Grant a plan'} onClose={props.onClose}>
      <p class="muted">The subscription starts now. A user with an active subscription must have it extended or cancelled first.</p>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        {!props.user && (
          <Field label="User's email">
            {(id) => (
              <>
                <input
                  id={id}
                  type="text"
                  inputmode="email"
                  autocapitalize="off"
                  spellcheck={false}
                  required
                  list={`${id}-list`}
                  autocomplete="off"
                  value={email}
                  onInput={(e) => setEmail(e.currentTarget.value)}
                />
                <datalist id={`${id}-list`}>
                  {matches.map((u) => (
                    <option key={u.id} value={u.email} />
                  ))}
                </datalist>
              </>
            )}
          </Field>
        )}
        <Field label="Plan">
          {(id) => (
            <PlanSelect
              id={id}
              choice={choice}
              describe={(p) =>
                `${p.name} · ${p.durationDays} days · ${p.trafficLimitBytes ? bytes(p.trafficLimitBytes) : 'unlimited'} · ${money(p.priceCents, p.currency)}`
              }
            />
          )}
        </Field>
        <ErrorNote error={act.error ?? choice.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy} disabled={!choice.planId}>
            Grant plan
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

function ExtendDialog(props: { sub: Subscription; onClose: () => void; onDone: () => void }) {
  const [days, setDays] = useState('30');
  const act = useAction(async () => {
    await gql(doc.EXTEND, { id: props.sub.id, days: Number(days) });
    toast(`Extended by ${days} days`);
    props.onDone();
  });
  return (
    <Dialog title="Extend subscription" onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Days to add">
          {(id) => (
            <input id={id} type="number" min={1} max={3660} required value={days} onInput={(e) => setDays(e.currentTarget.value)} />
          )}
        </Field>
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Extend
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

function TrafficDialog(props: { sub: Subscription; onClose: () => void; onDone: () => void }) {
  const limit = props.sub.trafficLimitBytes;
  const read = limit ? bytesToGb(limit) : '';
  const [traffic, setTraffic] = useState(read);
  const act = useAction(async () => {
    // Left as it was read, the allowance is sent back exactly as it is.
    const value = traffic === read ? limit : gbToBytes(traffic);
    await gql(doc.SET_TRAFFIC_LIMIT, { id: props.sub.id, bytes: value });
    toast(value ? `Allowance set to ${bytes(value)}` : 'Allowance lifted');
    props.onDone();
  });
  return (
    <Dialog title="Traffic allowance" onClose={props.onClose}>
      <p class="muted">
        For this subscription only; its plan keeps its own. Used this period: {bytes(props.sub.trafficUsedBytes)}. Raised
        past that, a user cut off connects again at once; at or below it, the user's tunnels are closed.
      </p>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Allowance per period (GB)" hint="Empty for unlimited.">
          {(id, hint) => (
            <input id={id} type="number" min={0} step="any" aria-describedby={hint} value={traffic} onInput={(e) => setTraffic(e.currentTarget.value)} />
          )}
        </Field>
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Set allowance
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

function ChangePlanDialog(props: { sub: Subscription; onClose: () => void; onDone: () => void }) {
  const choice = usePlanChoice(props.sub.plan?.id ?? '');
  const act = useAction(async () => {
    await gql(doc.CHANGE_PLAN, { id: props.sub.id, planId: choice.planId });
    toast(`Moved to ${choice.chosen?.name ?? 'the plan'}`);
    props.onDone();
  });
  return (
    <Dialog title="Change plan" onClose={props.onClose}>
      <p class="muted">
        The plan's traffic allowance and device limit replace this subscription's. Used this period (
        {bytes(props.sub.trafficUsedBytes)}), the period and the expiry stay. Over the new allowance, the user's tunnels
        are closed; devices beyond a smaller limit are refused, the newest first.
      </p>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="New plan">
          {(id) => (
            <PlanSelect
              id={id}
              choice={choice}
              describe={(p) =>
                `${p.name} · ${p.trafficLimitBytes ? bytes(p.trafficLimitBytes) : 'unlimited'} · ${p.deviceLimit} devices`
              }
            />
          )}
        </Field>
        <ErrorNote error={act.error ?? choice.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy} disabled={!choice.planId}>
            Change plan
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

export function SubscriptionActions(props: { sub: Subscription; changed: () => void }) {
  const [extending, setExtending] = useState(false);
  const [traffic, setTraffic] = useState(false);
  const [changing, setChanging] = useState(false);
  if (props.sub.status === 'CANCELLED') return null;
  return (
    <span class="row-actions">
      <Button small onClick={() => setExtending(true)}>
        Extend
      </Button>
      <Button small onClick={() => setTraffic(true)}>
        Traffic
      </Button>
      <Button small onClick={() => setChanging(true)}>
        Plan
      </Button>
      <ConfirmButton
        small
        label="Reset usage"
        title="Reset this subscription's usage?"
        body="Its traffic period starts over now with nothing used."
        confirmLabel="Reset usage"
        action={() => gql(doc.RESET_TRAFFIC, { id: props.sub.id })}
        done={props.changed}
      />
      {props.sub.status === 'ACTIVE' && (
        <ConfirmButton
          small
          variant="danger"
          label="Cancel"
          title="Cancel this subscription?"
          body="It ends now and the user's tunnels are closed."
          confirmLabel="Cancel subscription"
          action={() => gql(doc.CANCEL, { id: props.sub.id })}
          done={props.changed}
        />
      )}
      {traffic && (
        <TrafficDialog
          sub={props.sub}
          onClose={() => setTraffic(false)}
          onDone={() => {
            setTraffic(false);
            props.changed();
          }}
        />
      )}
      {changing && (
        <ChangePlanDialog
          sub={props.sub}
          onClose={() => setChanging(false)}
          onDone={() => {
            setChanging(false);
            props.changed();
          }}
        />
      )}
      {extending && (
        <ExtendDialog
          sub={props.sub}
          onClose={() => setExtending(false)}
          onDone={() => {
            setExtending(false);
            props.changed();
          }}
        />
      )}
    </span>
  );
}
