// Operator: creating an account, and setting an account's password for
// someone who lost theirs (there is no e-mail to reset it with).

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Role, User } from '../../api/types';
import { Button, Dialog, ErrorNote, Field, NewPasswordField, toast, useAction } from '../../ui/components';

const PASSWORD_HINT = 'At least 10 characters. Hand it over privately; they may change it.';

/** The role of an account, to choose. */
export function RoleField(props: { value: Role; set: (r: Role) => void }) {
  return (
    <Field label="Role">
      {(id) => (
        <select id={id} value={props.value} onChange={(e) => props.set(e.currentTarget.value as Role)}>
          <option value="USER">user</option>
          <option value="ADMIN">admin</option>
        </select>
      )}
    </Field>
  );
}

/** A new account, made by an admin (also while sign-up is closed). */
export function NewAccount(props: { onClose: () => void; onSaved: (u: User) => void }) {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState<Role>('USER');
  const act = useAction(async () => {
    const d = await gql<{ createUser: User }>(doc.CREATE_USER, { email: email.trim(), password, role });
    toast(`Account ${d.createUser.email} created`);
    props.onSaved(d.createUser);
  });
  return (
    <Dialog title="New account" onClose={props.onClose}>
      <form
        class="form-grid"
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
              autocomplete="off"
              required
              maxLength={254}
              value={email}
              onInput={(e) => setEmail(e.currentTarget.value)}
            />
          )}
        </Field>
        <NewPasswordField label="First password" hint={PASSWORD_HINT} value={password} set={setPassword} />
        <RoleField value={role} set={setRole} />
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Create account
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

/** Sets an account's password; its sign-ins end. */
export function SetPassword(props: { user: User; onClose: () => void }) {
  const [password, setPassword] = useState('');
  const act = useAction(async () => {
    await gql(doc.SET_USER_PASSWORD, { id: props.user.id, password });
    toast(`A new password is set for ${props.user.email}`);
    props.onClose();
  });
  return (
    <Dialog title={`Set the password of ${props.user.email}`} onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <p class="muted">It is signed out everywhere; its devices keep working.</p>
        <NewPasswordField label="New password" hint={PASSWORD_HINT} value={password} set={setPassword} />
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Set password
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}
