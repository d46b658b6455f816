// The signed-in user's account: change password, sign out everywhere.

import { useState } from 'preact/hooks';

import { ApiError } from '../../api/errors';
import { changePassword, logout, session, signOut } from '../../api/session';
import { Button, ConfirmButton, ErrorNote, Field, NewPasswordField, Page, toast, useAction } from '../../ui/components';
import { when } from '../../ui/format';
import { useStore } from '../../ui/hooks';

export function Account() {
  const s = useStore(session);
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [confirm, setConfirm] = useState('');
  const act = useAction(async () => {
    if (next !== confirm) throw new ApiError('INVALID', 'the two new passwords differ');
    await changePassword(current, next);
    setCurrent('');
    setNext('');
    setConfirm('');
    toast('Password changed. Other sessions were signed out.');
  });
  if (s.status !== 'signed-in') return null;
  return (
    <Page title="Account">
      <section class="card">
        <dl class="facts">
          <dt>Email</dt>
          <dd>{s.user.email}</dd>
          <dt>Role</dt>
          <dd>{s.user.role === 'ADMIN' ? 'operator (admin)' : 'subscriber'}</dd>
          <dt>Member since</dt>
          <dd>{when(s.user.createdAt)}</dd>
        </dl>
      </section>
      <section class="card" aria-labelledby="pw-title">
        <h2 id="pw-title">Change password</h2>
        <form
          class="form-grid"
          onSubmit={(e) => {
            e.preventDefault();
            void act.run();
          }}
        >
          <Field label="Current password">
            {(id) => (
              <input
                id={id}
                type="password"
                autocomplete="current-password"
                required
                value={current}
                onInput={(e) => setCurrent(e.currentTarget.value)}
              />
            )}
          </Field>
          <NewPasswordField
            label="New password"
            hint="At least 10 characters. Other sessions are signed out."
            value={next}
            set={setNext}
          />
          <Field label="New password again">
            {(id) => (
              <input
                id={id}
                type="password"
                autocomplete="new-password"
                required
                value={confirm}
                onInput={(e) => setConfirm(e.currentTarget.value)}
              />
            )}
          </Field>
          <ErrorNote error={act.error} />
          <div class="form-actions">
            <Button type="submit" variant="primary" busy={act.busy}>
              Change password
            </Button>
          </div>
        </form>
      </section>
      <section class="card" aria-labelledby="out-title">
        <h2 id="out-title">Sign out</h2>
        <p class="muted">
          “Sign out” at the top ends this browser’s session only. Signing out everywhere ends every session of
          this account, on every device and browser.
        </p>
        <ConfirmButton
          label="Sign out everywhere"
          title="Sign out everywhere?"
          body="Every browser and app signed in to this account will have to sign in again."
          confirmLabel="Sign out"
          action={logout}
        />
      </section>
    </Page>
  );
}

/** The top bar's sign-out: this browser only (the Account page signs out everywhere). */
export function SignOutButton() {
  const act = useAction(signOut);
  return (
    <Button small variant="ghost" busy={act.busy} onClick={() => void act.run()}>
      Sign out
    </Button>
  );
}
