// Operator: accounts. Search by email, filter by role and status, page
// through; open one for its subscriptions, devices, sessions, usage and
// audit trail; create one.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { CountedConnection, Role, User, UserStatus } from '../../api/types';
import { RoleBadge, UserStatusBadge } from '../../ui/badges';
import { Async, Button, Empty, Field, Link, Page, PagerBar, Table } from '../../ui/components';
import { when } from '../../ui/format';
import { usePager, useQuery } from '../../ui/hooks';
import { navigate } from '../../router';
import { NewAccount } from './accountDialogs';

export function Users() {
  const [search, setSearch] = useState('');
  const [applied, setApplied] = useState('');
  const [role, setRole] = useState<Role | ''>('');
  const [status, setStatus] = useState<UserStatus | ''>('');
  const [adding, setAdding] = useState(false);
  const pager = usePager();
  const q = useQuery(
    (signal) =>
      gql<{ users: CountedConnection<User> }>(
        doc.USERS,
        {
          filter: {
            emailContains: applied || undefined,
            role: role || undefined,
            status: status || undefined,
          },
          first: 25,
          after: pager.after,
        },
        signal,
      ),
    [applied, role, status, pager.after],
  );
  return (
    <Page
      title="Users"
      actions={
        <Button variant="primary" onClick={() => setAdding(true)}>
          New account
        </Button>
      }
    >
      {adding && <NewAccount onClose={() => setAdding(false)} onSaved={(u) => navigate(`/users/${u.id}`)} />}
      <form
        class="filters"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          pager.reset();
          setApplied(search.trim());
        }}
      >
        <Field label="Email contains">
          {(id) => (
            <input
              id={id}
              type="search"
              value={search}
              onInput={(e) => setSearch(e.currentTarget.value)}
              onBlur={() => {
                if (search.trim() !== applied) {
                  pager.reset();
                  setApplied(search.trim());
                }
              }}
            />
          )}
        </Field>
        <Field label="Role">
          {(id) => (
            <select
              id={id}
              value={role}
              onChange={(e) => {
                pager.reset();
                setRole(e.currentTarget.value as Role | '');
              }}
            >
              <option value="">any</option>
              <option value="ADMIN">admin</option>
              <option value="USER">user</option>
            </select>
          )}
        </Field>
        <Field label="Status">
          {(id) => (
            <select
              id={id}
              value={status}
              onChange={(e) => {
                pager.reset();
                setStatus(e.currentTarget.value as UserStatus | '');
              }}
            >
              <option value="">any</option>
              <option value="ACTIVE">active</option>
              <option value="DISABLED">disabled</option>
            </select>
          )}
        </Field>
        <button type="submit" class="btn secondary">
          Search
        </button>
      </form>
      <Async q={q}>
        {(d) =>
          d.users.nodes.length === 0 ? (
            <Empty>No account matches.</Empty>
          ) : (
            <>
              <p class="muted">
                {d.users.totalCount} {d.users.totalCount === 1 ? 'account' : 'accounts'}
              </p>
              <Table label="Users" head={['Email', 'Role', 'Status', 'Created']}>
                {d.users.nodes.map((u) => (
                  <tr key={u.id}>
                    <th scope="row">
                      <Link to={`/users/${u.id}`}>{u.email}</Link>
                    </th>
                    <td>
                      <RoleBadge role={u.role} />
                    </td>
                    <td>
                      <UserStatusBadge status={u.status} />
                    </td>
                    <td>{when(u.createdAt)}</td>
                  </tr>
                ))}
              </Table>
              <PagerBar
                page={pager.page}
                hasNext={d.users.pageInfo.hasNextPage}
                onNext={() => pager.next(d.users.pageInfo.endCursor)}
                onPrevious={pager.previous}
              />
            </>
          )
        }
      </Async>
    </Page>
  );
}
