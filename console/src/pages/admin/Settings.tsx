// Operator: settings changed at run time (Query.settings,
// Mutation.updateSettings). Today: whether visitors may create accounts.

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Settings as SettingsT } from '../../api/types';
import { Async, Badge, Button, ErrorNote, Page, toast, useAction } from '../../ui/components';
import { useQuery } from '../../ui/hooks';

export function Settings() {
  const q = useQuery((signal) => gql<{ settings: SettingsT }>(doc.SETTINGS, undefined, signal), []);
  const act = useAction(async (signUpEnabled: boolean) => {
    const d = await gql<{ updateSettings: SettingsT }>(doc.UPDATE_SETTINGS, { input: { signUpEnabled } });
    q.setData(() => ({ settings: d.updateSettings }));
    toast(d.updateSettings.signUpEnabled ? 'Sign-up is open.' : 'Sign-up is closed.');
  });
  return (
    <Page title="Settings">
      <section class="card" aria-labelledby="signup-title">
        <h2 id="signup-title">Sign-up</h2>
        <Async q={q}>
          {(d) => {
            const on = d.settings.signUpEnabled;
            return (
              <>
                <p>
                  Self-service sign-up is{' '}
                  <span data-testid="signup-state">
                    {on ? <Badge tone="ok">open</Badge> : <Badge tone="muted">closed</Badge>}
                  </span>
                  .{' '}
                  {on
                    ? 'Anyone who reaches the console can create an account (with no plan until one is granted).'
                    : 'Only operators create accounts; the sign-up form is gone and the API refuses sign-ups.'}
                </p>
                <Button busy={act.busy} variant={on ? undefined : 'primary'} onClick={() => void act.run(!on)}>
                  {on ? 'Close sign-up' : 'Open sign-up'}
                </Button>
              </>
            );
          }}
        </Async>
        <ErrorNote error={act.error} />
      </section>
    </Page>
  );
}
