// The console's shell: who is signed in decides the pages; the header holds
// the live indicator and the account; the navigation follows the role.

import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';

import { liveStatus } from './api/live';
import { session } from './api/session';
import type { User } from './api/types';
import { Account, SignOutButton } from './pages/auth/Account';
import { SignIn, SignUp } from './pages/auth/SignIn';
import { Audit } from './pages/admin/Audit';
import { Devices } from './pages/admin/Devices';
import { Nodes } from './pages/admin/Nodes';
import { Overview } from './pages/admin/Overview';
import { Plans } from './pages/admin/Plans';
import { Regions } from './pages/admin/Regions';
import { Sessions } from './pages/admin/Sessions';
import { Settings } from './pages/admin/Settings';
import { Subscriptions } from './pages/admin/Subscriptions';
import { UserDetail } from './pages/admin/UserDetail';
import { Users } from './pages/admin/Users';
import { MyDevices } from './pages/user/MyDevices';
import { MyPlan } from './pages/user/MyPlan';
import { match, navigate, useRoute } from './router';
import { Empty, Link, Loading, Page, Toasts } from './ui/components';
import { useStore } from './ui/hooks';

interface Route {
  path: string;
  label?: string;
  render: (params: Record<string, string>, user: User) => ComponentChildren;
}

const ADMIN_ROUTES: Route[] = [
  { path: '/', label: 'Overview', render: () => <Overview /> },
  { path: '/users', label: 'Users', render: () => <Users /> },
  { path: '/users/:id', render: (p) => <UserDetail id={p.id!} /> },
  { path: '/subscriptions', label: 'Subscriptions', render: () => <Subscriptions /> },
  { path: '/plans', label: 'Plans', render: () => <Plans /> },
  { path: '/regions', label: 'Regions', render: () => <Regions /> },
  { path: '/nodes', label: 'Nodes', render: () => <Nodes /> },
  { path: '/devices', label: 'Devices', render: () => <Devices /> },
  { path: '/sessions', label: 'Sessions', render: () => <Sessions /> },
  { path: '/audit', label: 'Audit log', render: () => <Audit /> },
  { path: '/settings', label: 'Settings', render: () => <Settings /> },
  { path: '/my/plan', label: 'My plan', render: (_p, u) => <MyPlan userId={u.id} /> },
  { path: '/my/devices', label: 'My devices', render: (_p, u) => <MyDevices userId={u.id} /> },
  { path: '/account', label: 'Account', render: () => <Account /> },
];

const USER_ROUTES: Route[] = [
  { path: '/', label: 'My plan', render: (_p, u) => <MyPlan userId={u.id} /> },
  { path: '/my/devices', label: 'My devices', render: (_p, u) => <MyDevices userId={u.id} /> },
  { path: '/my/plan', render: (_p, u) => <MyPlan userId={u.id} /> },
  { path: '/account', label: 'Account', render: () => <Account /> },
];

function LiveIndicator() {
  const status = useStore(liveStatus);
  if (status === 'idle') return null;
  const text = status === 'live' ? 'live' : status === 'connecting' ? 'connecting…' : 'reconnecting…';
  return (
    <span class={`live ${status}`} role="status" title="Live updates over /graphql/ws">
      <span class="dot" aria-hidden="true" />
      {text}
    </span>
  );
}

/** GraphiQL is served in debug mode only; link to it when it is there. */
function useGraphiQLAvailable(admin: boolean): boolean {
  const [ok, setOk] = useState(false);
  useEffect(() => {
    if (!admin) return;
    fetch('/graphiql', { method: 'HEAD', credentials: 'omit' }).then(
      (r) => setOk(r.ok),
      () => undefined,
    );
  }, [admin]);
  return ok;
}

function Shell(props: { user: User }) {
  const { path } = useRoute();
  const admin = props.user.role === 'ADMIN';
  const routes = admin ? ADMIN_ROUTES : USER_ROUTES;
  const graphiql = useGraphiQLAvailable(admin);
  const [menuOpen, setMenuOpen] = useState(false);
  const first = useRef(true);

  let content: ComponentChildren = null;
  for (const r of routes) {
    const params = match(r.path, path);
    if (params) {
      content = r.render(params, props.user);
      break;
    }
  }
  useEffect(() => {
    if (path === '/signup') navigate('/', true);
  }, [path]);

  useEffect(() => {
    setMenuOpen(false);
    // Keyboard and screen-reader users land on the new page's title.
    if (first.current) first.current = false;
    else document.getElementById('page-title')?.focus();
  }, [path]);

  const active = (r: Route) => (r.path === '/' ? path === '/' : path === r.path || path.startsWith(`${r.path}/`));

  return (
    <div class="shell">
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <button
          type="button"
          class="btn ghost menu-btn"
          aria-expanded={menuOpen}
          aria-controls="nav"
          onClick={() => setMenuOpen(!menuOpen)}
        >
          Menu
        </button>
        <Link to="/" class="brand">
          httvps
        </Link>
        <LiveIndicator />
        <span class="who" title={props.user.email}>
          {props.user.email}
        </span>
        <SignOutButton />
      </header>
      <nav id="nav" class={menuOpen ? 'open' : undefined} aria-label="Console">
        <ul>
          {routes
            .filter((r) => r.label)
            .map((r) => (
              <li key={r.path}>
                <Link to={r.path} aria-current={active(r) ? 'page' : undefined}>
                  {r.label}
                </Link>
              </li>
            ))}
          {graphiql && (
            <li>
              <a href="/graphiql" target="_blank" rel="noopener">
                GraphiQL ↗
              </a>
            </li>
          )}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        {content ?? (
          <Page title="Not found">
            <Empty>
              There is no such page. <Link to="/">Go to the start</Link>.
            </Empty>
          </Page>
        )}
      </main>
    </div>
  );
}

export function App() {
  const s = useStore(session);
  const { path } = useRoute();
  let body: ComponentChildren;
  if (s.status === 'loading') body = <Loading label="Starting…" />;
  else if (s.status === 'signed-out') body = path === '/signup' ? <SignUp /> : <SignIn reason={s.reason} />;
  else body = <Shell user={s.user} />;
  return (
    <>
      {body}
      <Toasts />
    </>
  );
}
