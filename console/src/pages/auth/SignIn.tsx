// Sign in and sign up: the pages of signed-out visitors.

import { useState } from 'preact/hooks';

import { ApiError, forbiddenReason } from '../../api/errors';
import { login, signUp } from '../../api/session';
import { Button, ErrorNote, Field, Link, Loading, NewPasswordField, useAction } from '../../ui/components';
import { useSignUpEnabled } from './signUpSetting';

function Shell(props: { title: string; children: preact.ComponentChildren }) {
  return (
    <main class="auth" id="main">
      <div class="auth-box">
        <p class="brand" aria-hidden="true">
          httvps
        </p>
        <h1>{props.title}</h1>
        {props.children}
      </div>
    </main>
  );
}

/**
 * Sign-in's refusals as the visitor reads them. A wrong password is a
 * BAD_REQUEST whatever the account; FORBIDDEN answers only the right
 * password of a disabled account.
 */
function loginError(e: unknown): unknown {
  if (e instanceof ApiError && e.code === 'UNAUTHENTICATED') {
    return new ApiError('BAD_REQUEST', 'wrong email or password, or the account is disabled');
  }
  if (e instanceof ApiError && e.code === 'FORBIDDEN') {
    return new ApiError('FORBIDDEN', `${forbiddenReason(e) ?? 'the account is disabled'}. Ask the operator of this service`);
  }
  return e;
}

/** Sign-up's FORBIDDEN: it was closed after this page was opened. */
function signUpError(e: unknown): unknown {
  if (e instanceof ApiError && e.code === 'FORBIDDEN') {
    return new ApiError('FORBIDDEN', `${forbiddenReason(e) ?? 'sign-up is closed on this service'}. Ask its operator for an account`);
  }
  return e;
}

export function SignIn(props: { reason?: string }) {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const signUpEnabled = useSignUpEnabled();
  const act = useAction(async () => {
    try {
      await login(email.trim(), password);
    } catch (e) {
      throw loginError(e);
    }
  });
  return (
    <Shell title="Sign in">
      {props.reason && (
        <p class="note info" role="status">
          {props.reason}
        </p>
      )}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        {/* Text, not type="email": browsers refuse internationalised addresses the server takes. */}
        <Field label="Email">
          {(id) => (
            <input
              id={id}
              type="text"
              inputmode="email"
              autocapitalize="off"
              spellcheck={false}
              autocomplete="username"
              required
              value={email}
              onInput={(e) => setEmail(e.currentTarget.value)}
            />
          )}
        </Field>
        <Field label="Password">
          {(id) => (
            <input
              id={id}
              type="password"
              autocomplete="current-password"
              required
              value={password}
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          )}
        </Field>
        <ErrorNote error={act.error} />
        <Button type="submit" variant="primary" busy={act.busy}>
          Sign in
        </Button>
      </form>
      {signUpEnabled && (
        <p class="muted">
          No account? <Link to="/signup">Create one</Link>
        </p>
      )}
    </Shell>
  );
}

export function SignUp() {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [confirm, setConfirm] = useState('');
  const signUpEnabled = useSignUpEnabled();
  const act = useAction(async () => {
    if (password !== confirm) throw new ApiError('INVALID', 'the two passwords differ');
    try {
      await signUp(email.trim(), password);
    } catch (e) {
      throw signUpError(e);
    }
  });
  if (signUpEnabled === undefined) {
    return (
      <Shell title="Create an account">
        <Loading />
      </Shell>
    );
  }
  if (!signUpEnabled) {
    return (
      <Shell title="Create an account">
        <p class="note info">Sign-up is closed on this service. Ask its operator for an account.</p>
        <p>
          <Link to="/">Sign in</Link>
        </p>
      </Shell>
    );
  }
  return (
    <Shell title="Create an account">
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Email">
          {(id) => (
            <input
              id={id}
              type="text"
              inputmode="email"
              autocapitalize="off"
              spellcheck={false}
              autocomplete="email"
              required
              value={email}
              onInput={(e) => setEmail(e.currentTarget.value)}
            />
          )}
        </Field>
        <NewPasswordField label="Password" hint="At least 10 characters." value={password} set={setPassword} />
        <Field label="Password again">
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
        <Button type="submit" variant="primary" busy={act.busy}>
          Create account
        </Button>
      </form>
      <p class="muted">
        Have an account? <Link to="/">Sign in</Link>
      </p>
    </Shell>
  );
}
