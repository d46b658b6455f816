// Features that wait for API additions (see proposed.graphql). The console
// asks the server once per page load whether it knows each field: a
// validation error naming an unknown field means "not yet", anything else
// (data, or another error such as "subscriptions need the WebSocket") means
// the field exists. Features that are not there render nothing.

import { ApiError, isUnknownField } from '../api/errors';
import { gql } from '../api/graphql';
import { session } from '../api/session';
import { post } from '../api/transport';

export type Capability = 'settings' | 'sessionEvents' | 'quotaEvents' | 'devicePlacement';

const PROBES: Record<Capability, { query: string; anonymous?: boolean }> = {
  settings: { query: 'query ProbeSettings { settings { signUpEnabled } }', anonymous: true },
  sessionEvents: { query: 'subscription ProbeSessionEvents { sessionEvents { kind } }' },
  quotaEvents: { query: 'subscription ProbeQuotaEvents { quotaEvents { kind } }' },
  devicePlacement: {
    query: 'query ProbeDevicePlacement { devices(first: 1) { nodes { placement { nodeId } } } }',
  },
};

const known = new Map<Capability, Promise<boolean>>();

session.subscribe((s) => {
  // What a caller may probe depends on who it is.
  if (s.status !== 'signed-in') {
    for (const cap of known.keys()) if (!PROBES[cap].anonymous) known.delete(cap);
  }
});

/** Whether the server offers `cap`; asked once, then remembered. */
export function supports(cap: Capability): Promise<boolean> {
  let answer = known.get(cap);
  if (!answer) {
    const probe = PROBES[cap];
    const run = probe.anonymous ? post(probe.query, undefined, null) : gql(probe.query);
    answer = run.then(
      () => true,
      (e: unknown) => {
        if (e instanceof ApiError && (e.code === 'NETWORK' || e.code === 'SESSION_ENDED')) {
          known.delete(cap); // ask again next time
          return false;
        }
        return !isUnknownField(e);
      },
    );
    known.set(cap, answer);
  }
  return answer;
}
