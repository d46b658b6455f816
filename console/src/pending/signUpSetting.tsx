// The sign-up setting (proposed: Query.settings, Mutation.updateSettings).
// Until the server has it, sign-up is open, as the current API's signUp is.

import { useEffect, useState } from 'preact/hooks';

import { gql } from '../api/graphql';
import { post } from '../api/transport';
import { Badge, Button, ErrorNote, useAction } from '../ui/components';
import { supports } from './capabilities';
import { useCapability } from './useCapability';

const SETTINGS = 'query Settings { settings { signUpEnabled } }';
const UPDATE = `mutation UpdateSettings($input: UpdateSettingsInput!) {
  updateSettings(input: $input) { signUpEnabled } }`;

/** Whether to offer sign-up on the sign-in page: undefined while asking. */
export function useSignUpEnabled(): boolean | undefined {
  const [enabled, setEnabled] = useState<boolean | undefined>(undefined);
  useEffect(() => {
    let live = true;
    void (async () => {
      if (!(await supports('settings'))) return live && setEnabled(true);
      try {
        const d = await post<{ settings: { signUpEnabled: boolean } }>(SETTINGS, undefined, null);
        if (live) setEnabled(d.settings.signUpEnabled);
      } catch {
        if (live) setEnabled(true);
      }
    })();
    return () => {
      live = false;
    };
  }, []);
  return enabled;
}

/** Admin card to open or close sign-up; nothing when the server lacks it. */
export function SignUpSettingCard() {
  const ok = useCapability('settings');
  const [enabled, setEnabled] = useState<boolean | undefined>(undefined);
  const act = useAction(async (value: boolean) => {
    const d = await gql<{ updateSettings: { signUpEnabled: boolean } }>(UPDATE, {
      input: { signUpEnabled: value },
    });
    setEnabled(d.updateSettings.signUpEnabled);
  });
  useEffect(() => {
    if (!ok) return;
    void gql<{ settings: { signUpEnabled: boolean } }>(SETTINGS).then(
      (d) => setEnabled(d.settings.signUpEnabled),
      (e: unknown) => act.setError(e),
    );
  }, [ok]);
  if (!ok || enabled === undefined) return null;
  return (
    <div class="card inline-card">
      <span>
        Sign-up is{' '}
        {enabled ? <Badge tone="ok">open</Badge> : <Badge tone="muted">closed</Badge>}
      </span>
      <Button small busy={act.busy} onClick={() => void act.run(!enabled)}>
        {enabled ? 'Close sign-up' : 'Open sign-up'}
      </Button>
      <ErrorNote error={act.error} />
    </div>
  );
}
