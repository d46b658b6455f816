// What the browser tests stand on: the servers they start (by PID, on ports
// the servers bind themselves: `--port 0`, address read from the log), a
// scratch PostgreSQL database, Debian's Chromium through playwright-core
// with every request to another origin aborted and recorded, and bounded
// waits everywhere.

import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { chromium } from 'playwright-core';

export const ROOT = new URL('../../', import.meta.url).pathname;
// The binaries cargo built, wherever CARGO_TARGET_DIR puts them.
const BUILT = join(resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug');
export const HTTVPS = process.env.HTTVPS_BIN ?? join(BUILT, 'httvps');
export const RELAY = process.env.HTTVPS_RELAY_BIN ?? join(BUILT, 'httvps-relay');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
export const SHOTS = join(ROOT, 'target/browser-screenshots');
const PG_URL = process.env.HTTVPS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** Resolves when `check` returns a truthy value; fails after `ms`. */
export async function until(what, check, ms = 10_000, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

/** A server process of ours: its output, its address, and a stop by PID. */
class Server {
  /** `marker`: the log line that names the address, in its field `field`. */
  constructor(child, label, marker = 'control plane listening', field = 'http.addr') {
    this.child = child;
    this.label = label;
    this.output = '';
    this.addr = null;
    this.exited = false;
    const take = (chunk) => {
      this.output += chunk.toString();
      if (!this.addr) {
        for (const line of this.output.split('\n')) {
          if (!line.includes(marker)) continue;
          try {
            this.addr = JSON.parse(line)[field] ?? JSON.parse(line).fields?.[field] ?? null;
          } catch {
            const m = new RegExp(`${field.replace('.', '\\.')}[=:]\\s*"?([\\d.:]+)`).exec(line);
            if (m) this.addr = m[1];
          }
        }
      }
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('exit', () => {
      this.exited = true;
    });
  }

  get base() {
    return `http://${this.addr}`;
  }

  /** Resolves once the address is logged (no health check). */
  async listening() {
    await until(
      `${this.label} to listen`,
      () => {
        if (this.exited) throw new Error(`${this.label} exited:\n${this.output}`);
        return this.addr;
      },
      30_000,
    );
    return this;
  }

  async ready() {
    await until(
      `${this.label} to listen`,
      () => {
        if (this.exited) throw new Error(`${this.label} exited:\n${this.output}`);
        return this.addr;
      },
      60_000,
    );
    await until(`${this.label} health`, async () => (await fetch(`${this.base}/api/v1/health`)).ok, 30_000);
    return this;
  }

  /** SIGTERM by PID, then SIGKILL if it lingers. */
  async stop() {
    if (this.exited || !this.child.pid) return;
    process.kill(this.child.pid, 'SIGTERM');
    try {
      await until(`${this.label} to exit`, () => this.exited, 15_000);
    } catch {
      process.kill(this.child.pid, 'SIGKILL');
      await until(`${this.label} to die`, () => this.exited, 5_000);
    }
  }
}

function start(args, env, label) {
  const child = spawn(HTTVPS, args, {
    cwd: ROOT,
    env: { ...process.env, RUST_LOG: process.env.SERVER_RUST_LOG ?? 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Server(child, label);
}

/** `httvps up` in a fresh data directory; the first admin's password from its output. */
export async function startUp() {
  const dir = mkdtempSync(join(tmpdir(), 'httvps-browser-up-'));
  const server = start(['up', '--data-dir', dir, '--port', '0', '--gateway-port', '0'], {}, 'httvps up');
  await server.ready();
  const password = /password:\s+(\S+)/.exec(server.output)?.[1];
  if (!password) throw new Error(`no admin password in the output of up:\n${server.output}`);
  return {
    server,
    admin: { email: 'admin@localhost', password },
    debug: true,
    tokenMinutes: 60,
    // No BACKEND_PUBLIC_URL: machines are started with their token.
    enrolls: false,
    // `up` runs a gateway (self-signed, its certificate in the data
    // directory) and a node in region `local`: real tunnels work.
    dataPlane: { caCert: join(dir, 'gateway.crt') },
    cleanup: async () => {
      await server.stop();
      keepLog('up', server.output);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function psql(sql) {
  const r = spawnSync('psql', ['-q', '-v', 'ON_ERROR_STOP=1', '-d', PG_URL, '-c', sql], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`psql failed: ${r.stderr}`);
}

/**
 * `httvps serve` on a fresh PostgreSQL database, in production mode (no
 * debug: no introspection, no GraphiQL), with an admin made by the CLI.
 */
export async function startServe() {
  // Named like the Rust suites' databases, so scripts/test.sh drops it if
  // this run is killed before it can.
  const db = `httvps_t_${process.pid}_browser`;
  psql(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
  psql(`CREATE DATABASE "${db}"`);
  const dsn = PG_URL.replace(/\/[^/]*$/, `/${db}`);
  const env = {
    BACKEND_DB_DSN: dsn,
    BACKEND_SECRET_KEY: 'browser-tests-secret-key-0123456789abcdef',
    BACKEND_LOG_FORMAT: 'json',
    // One-minute access tokens: the console refreshes them during the run.
    JWT_EXPIRE_MINUTES: '1',
    // Registering machines gives enrollment strings (shown, never redeemed
    // here): the URL and pin they carry are the production server's.
    BACKEND_PUBLIC_URL: 'https://cp.example.test:8443',
    BACKEND_ENROLL_PIN: `sha256:${'ab'.repeat(32)}`,
  };
  const admin = { email: 'ops@example.com', password: 'operator-password-1' };
  const made = spawnSync(HTTVPS, ['admin', 'create', '--email', admin.email, '--password-stdin'], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    input: `${admin.password}\n`,
    encoding: 'utf8',
  });
  if (made.status !== 0) throw new Error(`admin create failed: ${made.stderr}${made.stdout}`);
  const server = start(['serve', '--port', '0'], env, 'httvps serve');
  await server.ready();
  return {
    server,
    admin,
    debug: false,
    tokenMinutes: 1,
    dataPlane: null,
    enrolls: true,
    cleanup: async () => {
      await server.stop();
      keepLog('serve-pg', server.output);
      psql(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
    },
  };
}

/**
 * Chromium with a guard: any request that does not go to the server under
 * test is aborted and recorded (the console must load nothing from another
 * origin), and so is every CSP violation and page error.
 */
export async function launch(base) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const origin = new URL(base).origin;
  const wsOrigin = origin.replace(/^http/, 'ws');
  const report = { external: [], csp: [], errors: [], urls: [] };
  const contexts = [];

  async function context(options = {}) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 }, ...options });
    await ctx.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(`${origin}/`) || url === origin) return route.continue();
      report.external.push(url);
      return route.abort('blockedbyclient');
    });
    await ctx.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) => {
        console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
      });
    });
    ctx.on('page', (page) => watch(page));
    contexts.push(ctx);
    return ctx;
  }

  function watch(page) {
    page.on('console', (m) => {
      const text = m.text();
      if (/Content Security Policy|CSP violation/i.test(text)) report.csp.push(text);
      else if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 4\d\d/.test(text)) {
        report.errors.push(text);
      }
    });
    page.on('pageerror', (e) => report.errors.push(e.message));
    page.on('request', (r) => report.urls.push(r.url()));
    page.on('websocket', (ws) => {
      report.urls.push(ws.url());
      if (!ws.url().startsWith(`${wsOrigin}/`)) report.external.push(ws.url());
    });
  }

  return {
    browser,
    context,
    report,
    close: async () => {
      for (const c of contexts) await c.close().catch(() => undefined);
      await browser.close();
    },
  };
}

/** Keeps a server's output beside the screenshots (for a failure's story). */
export function keepLog(mode, output) {
  const dir = join(SHOTS, mode);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'server.log'), output);
}

/** Saves a full-page screenshot under target/browser-screenshots/<mode>/. */
export async function shot(page, mode, name) {
  const dir = join(SHOTS, mode);
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: true });
}

/** Posts one GraphQL operation (for checks from outside the browser). */
export async function gql(base, query, variables = {}, token) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  return res.json();
}

/**
 * `httvps-relay connect` for a device: every connection to its address is
 * forwarded through a tunnel (gateway, then node) to `forward`.
 */
export async function startClient({ base, deviceToken, caCert, forward, region }) {
  const child = spawn(
    RELAY,
    [
      'connect',
      '--backend',
      base,
      '--ca-cert',
      caCert,
      '--socks',
      '127.0.0.1:0',
      '--forward',
      forward,
      ...(region ? ['--region', region] : []),
    ],
    {
      cwd: ROOT,
      // The token through the environment: not in the process list.
      env: { ...process.env, RUST_LOG: 'info', CLIENT_DEVICE_TOKEN: deviceToken },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  return new Server(child, 'httvps-relay connect', 'SOCKS5 proxy listening', 'socks').listening();
}

/** A TCP echo server on 127.0.0.1 (port chosen by the system). */
export async function startEcho() {
  const { createServer } = await import('node:net');
  const sockets = new Set();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** Sends `text` through the TCP address `addr` and waits for its echo. */
export async function echoThrough(addr, text, ms = 15_000) {
  const { connect } = await import('node:net');
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const s = connect(port, host);
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no echo through ${addr} within ${ms} ms (got ${JSON.stringify(got)})`));
    }, ms);
    s.on('connect', () => s.write(text));
    s.on('data', (d) => {
      got += d.toString();
      if (got.length >= text.length) {
        clearTimeout(timer);
        s.end();
        resolve(got);
      }
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
