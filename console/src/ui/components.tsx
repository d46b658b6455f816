// The console's building blocks: links, buttons, fields, states (loading,
// empty, error), tables, dialogs, copy buttons and toasts.

import type { ButtonHTMLAttributes, ComponentChildren } from 'preact';
import { useEffect, useId, useLayoutEffect, useRef, useState } from 'preact/hooks';

import { describe } from '../api/errors';
import { Store } from '../api/store';
import { BASE, onLinkClick } from '../router';
import { useStore } from './hooks';

export function Link(props: {
  to: string;
  children: ComponentChildren;
  class?: string;
  'aria-current'?: 'page' | undefined;
}) {
  return (
    <a
      href={BASE + props.to}
      class={props.class}
      aria-current={props['aria-current']}
      onClick={(e) => onLinkClick(e as unknown as MouseEvent, props.to)}
    >
      {props.children}
    </a>
  );
}

export function Page(props: { title: string; actions?: ComponentChildren; children: ComponentChildren }) {
  useEffect(() => {
    document.title = `${props.title} · httvps`;
  }, [props.title]);
  return (
    <section class="page" aria-labelledby="page-title">
      <header class="page-head">
        <h1 id="page-title" tabIndex={-1}>
          {props.title}
        </h1>
        {props.actions && <div class="actions">{props.actions}</div>}
      </header>
      {props.children}
    </section>
  );
}

export function Loading(props: { label?: string }) {
  return (
    <p class="state loading" role="status" aria-live="polite">
      <span class="spinner" aria-hidden="true" />
      {props.label ?? 'Loading…'}
    </p>
  );
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="state empty">{props.children}</p>;
}

export function ErrorNote(props: { error: unknown; retry?: () => void }) {
  if (!props.error) return null;
  return (
    <div class="note error" role="alert">
      <span>{describe(props.error)}</span>
      {props.retry && (
        <button type="button" class="btn small" onClick={props.retry}>
          Try again
        </button>
      )}
    </div>
  );
}

/** Loading, error or content, for a query's state. */
export function Async<T>(props: {
  q: { data: T | undefined; error: unknown; loading: boolean; reload: () => void };
  children: (data: T) => ComponentChildren;
}) {
  const { data, error, loading, reload } = props.q;
  if (data === undefined) {
    if (loading) return <Loading />;
    return <ErrorNote error={error} retry={reload} />;
  }
  return (
    <>
      {error ? <ErrorNote error={error} retry={reload} /> : null}
      {props.children(data)}
    </>
  );
}

type BtnVariant = 'primary' | 'secondary' | 'danger' | 'ghost';

export function Button(
  props: Omit<ButtonHTMLAttributes<HTMLButtonElement>, 'class'> & {
    variant?: BtnVariant;
    busy?: boolean;
    small?: boolean;
  },
) {
  const { variant = 'secondary', busy, small, children, disabled, type, ...rest } = props;
  return (
    <button
      {...rest}
      type={type ?? 'button'}
      class={`btn ${variant}${small ? ' small' : ''}`}
      disabled={Boolean(disabled) || busy}
      aria-busy={busy ? 'true' : undefined}
    >
      {children}
    </button>
  );
}

/** A labelled form control; `children` gets the id to put on the control. */
export function Field(props: {
  label: string;
  hint?: ComponentChildren;
  children: (id: string, describedBy: string | undefined) => ComponentChildren;
  class?: string;
}) {
  const id = useId();
  const hintId = props.hint ? `${id}-hint` : undefined;
  return (
    <div class={`field ${props.class ?? ''}`}>
      <label for={id}>{props.label}</label>
      {props.children(id, hintId)}
      {props.hint && (
        <small id={hintId} class="hint">
          {props.hint}
        </small>
      )}
    </div>
  );
}

/** A field for choosing a password: the server's policy (at least 10
 * characters) checked as it is typed, `hint` beneath it. */
export function NewPasswordField(props: { label: string; hint: string; value: string; set: (v: string) => void }) {
  return (
    <Field label={props.label} hint={props.hint}>
      {(id, hint) => (
        <input
          id={id}
          type="password"
          autocomplete="new-password"
          minLength={10}
          required
          aria-describedby={hint}
          value={props.value}
          onInput={(e) => props.set(e.currentTarget.value)}
        />
      )}
    </Field>
  );
}

export function Badge(props: { tone: 'ok' | 'warn' | 'bad' | 'muted' | 'info'; children: ComponentChildren }) {
  return <span class={`badge ${props.tone}`}>{props.children}</span>;
}

export function Table(props: { label: string; head: string[]; children: ComponentChildren }) {
  return (
    <div class="table-wrap" tabIndex={0} role="region" aria-label={props.label}>
      <table>
        <thead>
          <tr>
            {props.head.map((h) => (
              <th scope="col" key={h}>
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{props.children}</tbody>
      </table>
    </div>
  );
}

export function PagerBar(props: {
  page: number;
  hasNext: boolean;
  onNext: () => void;
  onPrevious: () => void;
}) {
  if (props.page === 1 && !props.hasNext) return null;
  return (
    <nav class="pager" aria-label="Pages">
      <Button small disabled={props.page === 1} onClick={props.onPrevious}>
        ← Previous
      </Button>
      <span>Page {props.page}</span>
      <Button small disabled={!props.hasNext} onClick={props.onNext}>
        Next →
      </Button>
    </nav>
  );
}

/**
 * A modal dialog (native <dialog>: focus stays inside, Esc closes it). When
 * it goes, focus goes back to what had it before (the button that opened it),
 * if that is still on the page.
 */
export function Dialog(props: { title: string; onClose: () => void; children: ComponentChildren; wide?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  // A layout effect: its clean-up runs while the dialog is still in the page.
  useLayoutEffect(() => {
    const d = ref.current;
    const opener = document.activeElement;
    if (d && !d.open) d.showModal();
    return () => {
      d?.close();
      const now = document.activeElement;
      if (
        opener instanceof HTMLElement &&
        opener !== document.body &&
        opener.isConnected &&
        (!now || now === document.body || d?.contains(now))
      ) {
        opener.focus();
      }
    };
  }, []);
  return (
    <dialog
      ref={ref}
      class={props.wide ? 'wide' : undefined}
      aria-labelledby={titleId}
      onCancel={(e) => {
        e.preventDefault();
        props.onClose();
      }}
    >
      <header class="dialog-head">
        <h2 id={titleId}>{props.title}</h2>
        <button type="button" class="btn ghost small" aria-label="Close" onClick={props.onClose}>
          ✕
        </button>
      </header>
      {props.children}
    </dialog>
  );
}

/** Runs an async action with busy and error states. */
export function useAction<A extends unknown[]>(fn: (...args: A) => Promise<unknown>) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  // A new attempt the browser stops (a field too short, one left empty)
  // never reaches `run`: the last attempt's error would stand beside the
  // browser's own message, naming a mistake no longer made.
  useEffect(() => {
    const stale = () => setError(null);
    document.addEventListener('invalid', stale, true);
    return () => document.removeEventListener('invalid', stale, true);
  }, []);
  const run = async (...args: A): Promise<boolean> => {
    setBusy(true);
    setError(null);
    try {
      await fn(...args);
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, run, setError };
}

/** A button that asks for confirmation in a dialog before acting. */
export function ConfirmButton(props: {
  label: string;
  title: string;
  body: ComponentChildren;
  confirmLabel?: string;
  variant?: BtnVariant;
  small?: boolean;
  action: () => Promise<unknown>;
  done?: () => void;
}) {
  const [open, setOpen] = useState(false);
  const act = useAction(props.action);
  return (
    <>
      <Button variant={props.variant ?? 'secondary'} small={props.small} onClick={() => setOpen(true)}>
        {props.label}
      </Button>
      {open && (
        <Dialog title={props.title} onClose={() => setOpen(false)}>
          <div class="dialog-body">{props.body}</div>
          <ErrorNote error={act.error} />
          <footer class="dialog-foot">
            <Button onClick={() => setOpen(false)}>Keep it</Button>
            <Button
              variant={props.variant === 'danger' ? 'danger' : 'primary'}
              busy={act.busy}
              onClick={async () => {
                if (await act.run()) {
                  setOpen(false);
                  props.done?.();
                }
              }}
            >
              {props.confirmLabel ?? props.label}
            </Button>
          </footer>
        </Dialog>
      )}
    </>
  );
}

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context, or permission refused: select and copy.
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.className = 'offscreen';
    document.body.append(ta);
    ta.select();
    const ok = document.execCommand('copy');
    ta.remove();
    return ok;
  }
}

export function CopyButton(props: { text: string; label?: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');
  useEffect(() => {
    if (state === 'idle') return;
    const t = setTimeout(() => setState('idle'), 2000);
    return () => clearTimeout(t);
  }, [state]);
  return (
    <button
      type="button"
      class="btn small"
      onClick={async () => setState((await copyText(props.text)) ? 'copied' : 'failed')}
    >
      <span aria-live="polite">
        {state === 'copied' ? 'Copied' : state === 'failed' ? 'Copy failed: select the text' : props.label ?? 'Copy'}
      </span>
    </button>
  );
}

/** A value shown once (a token, a link): read-only, selectable, copyable. */
export function OnceValue(props: { label: string; value: string; testId?: string }) {
  const id = useId();
  return (
    <div class="once">
      <label for={id}>{props.label}</label>
      <div class="once-row">
        <input
          id={id}
          class="mono"
          readOnly
          value={props.value}
          data-testid={props.testId}
          onFocus={(e) => (e.currentTarget as HTMLInputElement).select()}
        />
        <CopyButton text={props.value} />
      </div>
    </div>
  );
}

// Toasts: short confirmations of what just happened.
interface Toast {
  id: number;
  text: string;
}
const toasts = new Store<Toast[]>([]);
let toastId = 0;

export function toast(text: string): void {
  const t = { id: ++toastId, text };
  toasts.set([...toasts.get(), t]);
  setTimeout(() => toasts.set(toasts.get().filter((x) => x.id !== t.id)), 4000);
}

export function Toasts() {
  const list = useStore(toasts);
  return (
    <div class="toasts" role="status" aria-live="polite">
      {list.map((t) => (
        <p key={t.id} class="toast">
          {t.text}
        </p>
      ))}
    </div>
  );
}
