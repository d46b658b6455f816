// Operator: regions (each a pool of nodes sharing one Shadowsocks key).

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, Region } from '../../api/types';
import {
  Async,
  Button,
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
import { when } from '../../ui/format';
import { usePager, useQuery } from '../../ui/hooks';

const CIPHERS = ['chacha20-ietf-poly1305', 'aes-128-gcm', 'aes-256-gcm'];

function NewRegion(props: { onClose: () => void; onSaved: () => void }) {
  const [code, setCode] = useState('');
  const [name, setName] = useState('');
  const [method, setMethod] = useState('');
  const act = useAction(async () => {
    await gql(doc.CREATE_REGION, {
      code: code.trim(),
      name: name.trim(),
      poolMethod: method || null,
    });
    toast(`Region ${code.trim()} created`);
    props.onSaved();
  });
  return (
    <Dialog title="New region" onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Code" hint="Letters, digits, - and _; e.g. eu-west.">
          {(id, hint) => (
            <input
              id={id}
              required
              maxLength={32}
              pattern="[A-Za-z0-9_\-]+"
              aria-describedby={hint}
              value={code}
              onInput={(e) => setCode(e.currentTarget.value)}
            />
          )}
        </Field>
        <Field label="Name">
          {(id) => <input id={id} required maxLength={100} value={name} onInput={(e) => setName(e.currentTarget.value)} />}
        </Field>
        <Field label="Pool cipher" hint="The region's nodes share one key with this cipher.">
          {(id, hint) => (
            <select id={id} aria-describedby={hint} value={method} onChange={(e) => setMethod(e.currentTarget.value)}>
              <option value="">server default</option>
              {CIPHERS.map((c) => (
                <option key={c}>{c}</option>
              ))}
            </select>
          )}
        </Field>
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Create region
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

export function Regions() {
  const [adding, setAdding] = useState(false);
  const pager = usePager();
  const q = useQuery(
    (signal) => gql<{ regions: Connection<Region> }>(doc.REGIONS, { first: 50, after: pager.after }, signal),
    [pager.after],
  );
  return (
    <Page
      title="Regions"
      actions={
        <Button variant="primary" onClick={() => setAdding(true)}>
          New region
        </Button>
      }
    >
      <Async q={q}>
        {(d) =>
          d.regions.nodes.length === 0 ? (
            <Empty>No regions yet. Create one, then register its nodes and gateways.</Empty>
          ) : (
            <>
              <Table label="Regions" head={['Code', 'Name', 'Pool cipher', 'Created']}>
                {d.regions.nodes.map((r) => (
                  <tr key={r.id}>
                    <th scope="row" class="mono">
                      {r.code}
                    </th>
                    <td>{r.name}</td>
                    <td class="mono">{r.poolMethod}</td>
                    <td>{when(r.createdAt)}</td>
                  </tr>
                ))}
              </Table>
              <PagerBar
                page={pager.page}
                hasNext={d.regions.pageInfo.hasNextPage}
                onNext={() => pager.next(d.regions.pageInfo.endCursor)}
                onPrevious={pager.previous}
              />
            </>
          )
        }
      </Async>
      {adding && (
        <NewRegion
          onClose={() => setAdding(false)}
          onSaved={() => {
            setAdding(false);
            q.reload();
          }}
        />
      )}
    </Page>
  );
}
