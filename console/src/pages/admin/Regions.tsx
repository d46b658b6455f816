// Operator: regions (each a pool of nodes sharing one Shadowsocks key):
// create, rename (the code and key stay), delete one no node belongs to.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Connection, Region } from '../../api/types';
import {
  Async,
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

function RenameRegion(props: { region: Region; onClose: () => void; onSaved: () => void }) {
  const [name, setName] = useState(props.region.name);
  const act = useAction(async () => {
    await gql(doc.RENAME_REGION, { id: props.region.id, name: name.trim() });
    toast(`Region ${props.region.code} renamed`);
    props.onSaved();
    props.onClose();
  });
  return (
    <Dialog title={`Rename ${props.region.code}`} onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Name" hint="Its code and pool key stay.">
          {(id, hint) => (
            <input id={id} required maxLength={100} aria-describedby={hint} value={name} onInput={(e) => setName(e.currentTarget.value)} />
          )}
        </Field>
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Rename
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

export function Regions() {
  const [adding, setAdding] = useState(false);
  const [renaming, setRenaming] = useState<Region | null>(null);
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
              <Table label="Regions" head={['Code', 'Name', 'Pool cipher', 'Created', '']}>
                {d.regions.nodes.map((r) => (
                  <tr key={r.id}>
                    <th scope="row" class="mono">
                      {r.code}
                    </th>
                    <td>{r.name}</td>
                    <td class="mono">{r.poolMethod}</td>
                    <td>{when(r.createdAt)}</td>
                    <td>
                      <span class="row-actions">
                        <Button small onClick={() => setRenaming(r)}>
                          Rename
                        </Button>
                        <ConfirmButton
                          small
                          variant="danger"
                          label="Delete"
                          title={`Delete region ${r.code}?`}
                          body="Only a region no node or gateway belongs to can go. Its pool key goes with it."
                          action={async () => {
                            await gql(doc.DELETE_REGION, { id: r.id });
                            toast(`Region ${r.code} deleted`);
                          }}
                          done={q.reload}
                        />
                      </span>
                    </td>
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
      {renaming && <RenameRegion region={renaming} onClose={() => setRenaming(null)} onSaved={q.reload} />}
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
