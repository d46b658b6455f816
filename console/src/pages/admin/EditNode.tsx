// Operator: change a registered machine's description in place. An Outline
// node's name, address and capacity (new tunnels go to a new address; open
// ones keep theirs); a gateway's name and public URL (the links handed out
// from now on; the gateway's own GATEWAY_PUBLIC_URL is set on its host).
// Only the fields that differ are sent; the server audits what changed.

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { GatewayNode, OutlineNode } from '../../api/types';
import { Button, Dialog, ErrorNote, Field, toast, useAction } from '../../ui/components';

type Value = [string, (v: string) => void];

/** An Outline node's host, port and capacity, as registering and editing ask for them. */
export function AddressFields(props: { hostHint: string; host: Value; port: Value; capacity: Value }) {
  const [host, setHost] = props.host;
  const [port, setPort] = props.port;
  const [capacity, setCapacity] = props.capacity;
  return (
    <>
      <Field label="Host" hint={props.hostHint}>
        {(id, hint) => (
          <input id={id} required maxLength={253} aria-describedby={hint} value={host} onInput={(e) => setHost(e.currentTarget.value)} />
        )}
      </Field>
      <Field label="Port">
        {(id) => <input id={id} type="number" required min={1} max={65535} value={port} onInput={(e) => setPort(e.currentTarget.value)} />}
      </Field>
      <Field label="Capacity" hint="Most concurrent sessions.">
        {(id, hint) => (
          <input id={id} type="number" required min={1} aria-describedby={hint} value={capacity} onInput={(e) => setCapacity(e.currentTarget.value)} />
        )}
      </Field>
    </>
  );
}

type Target = { kind: 'node'; node: OutlineNode } | { kind: 'gateway'; node: GatewayNode };

/** The fields of `next` that differ from `was` (trimmed text, numbers). */
function changed(was: Record<string, unknown>, next: Record<string, string | number>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(next)) {
    const value = typeof v === 'string' ? v.trim() : v;
    if (value !== was[k]) out[k] = value;
  }
  return out;
}

function EditDialog(props: Target & { onClose: () => void; done: () => void }) {
  // The row as the dialog opened on it: the lists are re-read under an open
  // dialog, and a field changed elsewhere meanwhile is not sent back.
  const [was] = useState(props);
  const { node } = was;
  const outline = was.kind === 'node' ? was.node : null;
  const gateway = was.kind === 'gateway' ? was.node : null;
  const [name, setName] = useState(node.name);
  const [host, setHost] = useState(outline?.host ?? '');
  const [port, setPort] = useState(String(outline?.port ?? ''));
  const [capacity, setCapacity] = useState(String(outline?.capacity ?? ''));
  const [url, setUrl] = useState(gateway?.publicUrl ?? '');
  const act = useAction(async () => {
    if (outline) {
      const input = changed(outline as unknown as Record<string, unknown>, {
        name,
        host,
        port: Number(port),
        capacity: Number(capacity),
      });
      await gql(doc.UPDATE_OUTLINE_NODE, { id: node.id, input });
    } else {
      const input = changed(node as unknown as Record<string, unknown>, { name, publicUrl: url });
      await gql(doc.UPDATE_GATEWAY_NODE, { id: node.id, input });
    }
    toast(`${name.trim()} saved`);
  });
  return (
    <Dialog title={`Edit ${node.name}`} onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={async (e) => {
          e.preventDefault();
          if (await act.run()) {
            props.onClose();
            props.done();
          }
        }}
      >
        <Field label="Name">
          {(id) => <input id={id} required maxLength={100} value={name} onInput={(e) => setName(e.currentTarget.value)} />}
        </Field>
        {outline && (
          <AddressFields
            hostHint="New tunnels go to a new address; open ones keep theirs."
            host={[host, setHost]}
            port={[port, setPort]}
            capacity={[capacity, setCapacity]}
          />
        )}
        {gateway && (
          <Field label="Public URL" hint="Links handed out from now on carry it; set GATEWAY_PUBLIC_URL on the gateway too.">
            {(id, hint) => (
              <input id={id} type="url" required aria-describedby={hint} value={url} onInput={(e) => setUrl(e.currentTarget.value)} />
            )}
          </Field>
        )}
        <ErrorNote error={act.error} />
        <footer class="dialog-foot">
          <Button onClick={props.onClose}>Cancel</Button>
          <Button type="submit" variant="primary" busy={act.busy}>
            Save
          </Button>
        </footer>
      </form>
    </Dialog>
  );
}

/** "Edit" for one row of either list. */
export function EditButton(props: Target & { done: () => void }) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <Button small onClick={() => setOpen(true)}>
        Edit
      </Button>
      {open && <EditDialog {...props} onClose={() => setOpen(false)} />}
    </>
  );
}
