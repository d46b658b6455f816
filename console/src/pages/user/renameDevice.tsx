// Renaming a device (its token, links and sessions stay as they are).

import { useState } from 'preact/hooks';

import * as doc from '../../api/documents';
import { gql } from '../../api/graphql';
import type { Device } from '../../api/types';
import { Button, Dialog, ErrorNote, Field, toast, useAction } from '../../ui/components';

export function RenameDevice(props: { device: Device; onClose: () => void; onSaved: () => void }) {
  const [name, setName] = useState(props.device.name);
  const act = useAction(async () => {
    await gql(doc.RENAME_DEVICE, { id: props.device.id, name: name.trim() });
    toast(`Renamed to “${name.trim()}”`);
    props.onSaved();
    props.onClose();
  });
  return (
    <Dialog title={`Rename “${props.device.name}”`} onClose={props.onClose}>
      <form
        class="form-grid"
        onSubmit={(e) => {
          e.preventDefault();
          void act.run();
        }}
      >
        <Field label="Name" hint="Its links keep working.">
          {(id, hint) => (
            <input
              id={id}
              required
              maxLength={64}
              aria-describedby={hint}
              value={name}
              onInput={(e) => setName(e.currentTarget.value)}
            />
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
