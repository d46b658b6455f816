// The console in a real browser (Debian's Chromium), against `httvps up`
// (SQLite, debug) and against `httvps serve` on PostgreSQL (production
// mode), each started here on a port it picks itself:
//
// an admin signs in, creates a region and a plan; a duplicated tab (a copy
// of the tab's sessionStorage) and the first tab both stay signed in; a
// malformed address shows "Not found"; closing a dialog gives focus back to
// the button that opened it; the admin registers a node and a gateway
// (tokens shown once); the admin closes sign-up (the form is gone,
// the API refuses) and opens it again; a new user signs up; the admin
// grants the plan; the user signs in, adds a device, and both QR codes
// decode to the exact links the API returned; against `up` (which runs a
// gateway and a node) a real tunnel of that device opens: the admin's live
// feed shows the session open, the user's page shows the device's region
// and node, live; the node's heartbeats (sent by this test with the node's
// token) stop and the overview shows it down within the lease + 2 s
// without a reload; with the tunnel, the user replaces the device's links
// and the feed shows its sessions close and the placement goes, live; the
// admin revokes the device and the user's page shows it; narrow (360 px)
// layouts, long names with no break point included; a throttled refresh
// (LIMIT_EXCEEDED) keeps the session and the console signs in again on its
// own; GraphiQL renders with every request to another origin blocked.
// Every page's screenshot goes to target/browser-screenshots/<mode>/. No
// request may leave the server's origin, no CSP violation or page error may
// happen, and no token may appear in a URL.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import jsQR from 'jsqr';

import { echoThrough, gql, launch, ROOT, shot, startClient, startEcho, startServe, startUp, until } from './harness.mjs';

/** The node lease: 3 missed heartbeats of 5 s; the sweeper runs every 2 s. */
const LEASE_MS = 15_000;
const SWEEP_MS = 2_000;
const BUDGET_BYTES = 300 * 1024;

/** Every string under a key named like a credential, anywhere in `v`. */
function credentials(v, out = new Set()) {
  if (Array.isArray(v)) v.forEach((x) => credentials(x, out));
  else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (typeof x === 'string' && /^(accessToken|refreshToken|token|rotateNodeToken)$/.test(k) && x.length > 16) {
        out.add(x);
      } else credentials(x, out);
    }
  }
  return out;
}

async function signIn(page, base, who) {
  await page.goto(`${base}/console/`);
  await page.getByLabel('Email').fill(who.email);
  await page.getByLabel('Password', { exact: true }).fill(who.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10_000 });
}

async function go(page, label) {
  await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: label, exact: true }).click();
  await page.locator('#page-title').waitFor();
}

/** Decodes the QR code drawn on a canvas. */
async function decodeQr(locator) {
  const img = await locator.evaluate((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    return { w: c.width, h: c.height, data: Array.from(d.data) };
  });
  return jsQR(new Uint8ClampedArray(img.data), img.w, img.h)?.data ?? null;
}

/**
 * The time (ms since the epoch, this machine's clock) at which the node's
 * status cell first reads `text` from now on, recorded by the page itself
 * when the DOM changes (Playwright's own waits poll up to every 500 ms).
 */
async function whenStatusReads(page, nodeName, text, timeout) {
  await page.evaluate(
    ([name, want]) => {
      const key = `${name}:${want}`;
      window.__statusAt ??= {};
      delete window.__statusAt[key];
      const check = () => {
        for (const row of document.querySelectorAll('tr')) {
          if (row.querySelector('th')?.textContent?.trim() !== name) continue;
          if (row.querySelector('.node-status')?.textContent?.trim() === want) {
            window.__statusAt[key] = Date.now();
            return true;
          }
        }
        return false;
      };
      if (check()) return;
      const obs = new MutationObserver(() => check() && obs.disconnect());
      obs.observe(document.body, { childList: true, subtree: true, characterData: true });
    },
    [nodeName, text],
  );
  const at = await page.waitForFunction(([key]) => window.__statusAt?.[key], [`${nodeName}:${text}`], {
    timeout,
    polling: 100,
  });
  return at.jsonValue();
}

const REFRESH_KEY = 'httvps.console.refresh';

/**
 * A new tab with a copy of a tab's sessionStorage (`stored`), as the
 * browser's "Duplicate tab" makes it.
 */
async function duplicate(ctx, stored) {
  const page = await ctx.newPage();
  await page.addInitScript((s) => {
    if (sessionStorage.length === 0) for (const [k, v] of Object.entries(s)) sessionStorage.setItem(k, v);
  }, stored);
  return page;
}

async function hasFocus(locator) {
  return locator.evaluate((el) => el === document.activeElement);
}

async function focusedText(page) {
  return page.evaluate(() => `${document.activeElement?.tagName} ${document.activeElement?.textContent?.trim() ?? ''}`);
}

function rowOf(page, name) {
  return page.locator('tr', { has: page.getByRole('rowheader', { name, exact: true }) });
}

async function scenario(t, mode, env) {
  const base = env.server.base;
  const b = await launch(base);
  t.after(async () => {
    await b.close();
    await env.cleanup();
  });
  const seen = new Set();
  let refreshed = 0;
  const collect = (ctx) =>
    ctx.on('response', async (r) => {
      if (!r.url().endsWith('/graphql')) return;
      try {
        const body = await r.json();
        credentials(body, seen);
        if (body.data?.refreshToken?.accessToken) refreshed++;
      } catch {
        // not JSON (or the page went away)
      }
    });
  const suffix = mode;
  const region = { code: `r-${suffix}`, name: `Region ${suffix}` };
  const plan = `Basic ${suffix}`;
  const nodeName = `node-${suffix}`;
  const user = { email: `alice-${suffix}@example.com`, password: 'alice-password-1' };

  const adminCtx = await b.context();
  collect(adminCtx);
  const admin = await adminCtx.newPage();

  await t.test('the first page is small and interactive within a second', async () => {
    const sizes = [];
    admin.on('requestfinished', (req) => {
      if (req.url().includes('/console/')) sizes.push(req.sizes().then((s) => s.responseBodySize));
    });
    // Chromium starts the page's process on the first navigation to the
    // origin: that is the browser's cost, not the console's, so a health
    // check goes first. Then, with nothing of the console cached, the time
    // at which the sign-in form is there to type in, in the page's own clock
    // (milliseconds since the navigation started).
    await admin.goto(`${base}/api/v1/health`);
    await admin.addInitScript(() => {
      new MutationObserver((_, obs) => {
        if (document.querySelector('input[inputmode=email]')) {
          window.__interactiveAt = performance.now();
          obs.disconnect();
        }
      }).observe(document, { childList: true, subtree: true });
    });
    await admin.goto(`${base}/console/`);
    await admin.getByLabel('Email').waitFor();
    const interactive = Math.round(await admin.evaluate(() => window.__interactiveAt));
    await admin.waitForLoadState('networkidle');
    const total = (await Promise.all(sizes)).reduce((a, x) => a + x, 0);
    t.diagnostic(`${mode}: sign-in page interactive in ${interactive} ms, ${(total / 1024).toFixed(1)} KiB transferred`);
    assert.ok(interactive < 1000, `interactive in ${interactive} ms`);
    assert.ok(total > 0 && total < BUDGET_BYTES, `first page ${total} bytes`);
    await shot(admin, mode, '01-sign-in');
  });

  await t.test('an admin signs in and creates a region and a plan', async () => {
    await signIn(admin, base, env.admin);
    await admin.getByRole('heading', { name: 'Overview' }).waitFor();
    await admin.getByRole('heading', { name: 'Nodes by region' }).waitFor();
    await shot(admin, mode, '02-admin-overview');

    await go(admin, 'Regions');
    await admin.getByRole('button', { name: 'New region' }).click();
    const rd = admin.getByRole('dialog');
    await rd.getByLabel('Code').fill(region.code);
    await rd.getByLabel('Name').fill(region.name);
    await rd.getByRole('button', { name: 'Create region' }).click();
    await rowOf(admin, region.code).waitFor();
    await shot(admin, mode, '03-regions');

    await go(admin, 'Plans');
    await admin.getByRole('button', { name: 'New plan' }).click();
    const pd = admin.getByRole('dialog');
    await pd.getByLabel('Name').fill(plan);
    await pd.getByLabel('Price').fill('4.99');
    await pd.getByLabel('Duration (days)').fill('30');
    await pd.getByLabel('Traffic allowance (GB)').fill('50');
    await pd.getByLabel('Devices').fill('3');
    await pd.getByRole('button', { name: 'Create plan' }).click();
    await rowOf(admin, plan).waitFor();
    await shot(admin, mode, '04-plans');
  });

  await t.test('a duplicated tab shares the session: neither tab presents a spent token, both stay signed in', async () => {
    // "Duplicate tab" copies the tab's sessionStorage, single-use refresh
    // token included: the copy spends it when it loads, and the first tab
    // must take the new one (presenting the spent one ends the session of
    // both).
    const copy = await admin.evaluate(() => ({ ...sessionStorage }));
    assert.ok(copy[REFRESH_KEY], 'a refresh token to copy');
    const dup = await duplicate(adminCtx, copy);
    await dup.goto(`${base}/console/plans`);
    await dup.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10_000 });
    await until('the first tab to take the new token', () =>
      admin.evaluate(([k, old]) => sessionStorage.getItem(k) !== old, [REFRESH_KEY, copy[REFRESH_KEY]]),
    );
    await admin.reload();
    await admin.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10_000 });
    // Both at once: one exchange, and the other tab takes its result.
    await Promise.all([admin.reload(), dup.reload()]);
    for (const p of [admin, dup]) await p.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10_000 });
    await go(dup, 'Regions');
    await rowOf(dup, region.code).waitFor();
    await go(admin, 'Plans');
    await rowOf(admin, plan).waitFor();
    const tokens = await Promise.all([admin, dup].map((p) => p.evaluate((k) => sessionStorage.getItem(k), REFRESH_KEY)));
    assert.equal(tokens[0], tokens[1], 'both tabs hold the same, current token');
    assert.notEqual(tokens[0], copy[REFRESH_KEY]);
    await dup.close();
  });

  await t.test('a malformed address shows "Not found"; a closed dialog gives focus back to the button that opened it', async () => {
    await admin.goto(`${base}/console/users/%ZZ`);
    await admin.getByRole('heading', { name: 'Not found', exact: true }).waitFor({ timeout: 10_000 });
    await admin.getByRole('link', { name: 'Go to the start' }).waitFor();

    // After a navigation the console puts focus on the page's title; from
    // there the keyboard user moves to a button.
    const titleFocused = () => admin.waitForFunction(() => document.activeElement?.id === 'page-title');
    await go(admin, 'Plans');
    await titleFocused();
    const newPlan = admin.getByRole('button', { name: 'New plan' });
    await newPlan.focus();
    await admin.keyboard.press('Enter');
    await admin.getByRole('dialog').waitFor();
    await admin.keyboard.press('Escape');
    await admin.getByRole('dialog').waitFor({ state: 'detached' });
    assert.ok(await hasFocus(newPlan), `focus on ${await focusedText(admin)} after Esc`);
    await newPlan.click();
    await admin.getByRole('dialog').getByRole('button', { name: 'Close' }).click();
    await admin.getByRole('dialog').waitFor({ state: 'detached' });
    assert.ok(await hasFocus(newPlan), `focus on ${await focusedText(admin)} after the close button`);

    // A confirmation: "Keep it" gives focus back to the row's button.
    await go(admin, 'Regions');
    await titleFocused();
    const del = rowOf(admin, region.code).getByRole('button', { name: 'Delete' });
    await del.focus();
    await admin.keyboard.press('Enter');
    await admin.getByRole('dialog').getByRole('button', { name: 'Keep it' }).click();
    await admin.getByRole('dialog').waitFor({ state: 'detached' });
    assert.ok(await hasFocus(del), `focus on ${await focusedText(admin)} after "Keep it"`);
  });

  let nodeToken;
  await t.test('the admin registers a node and a gateway and rotates a token, each with its lifetime; tokens are shown once', async () => {
    await go(admin, 'Nodes');
    await admin.getByRole('button', { name: 'Register node' }).click();
    const nd = admin.getByRole('dialog');
    await nd.getByLabel('Region').selectOption(region.code);
    await nd.getByLabel('Name').fill(nodeName);
    await nd.getByLabel('Host').fill('10.9.8.7');
    await nd.getByLabel('Port').fill('8388');
    await nd.getByRole('button', { name: 'Register node' }).click();
    const token = admin.getByTestId('machine-token');
    await token.waitFor();
    nodeToken = await token.inputValue();
    assert.ok(nodeToken.length >= 20, 'a machine token');
    // The command starts the node as it is: with the enrollment string
    // (URL and pin) where the server has a public URL, else with the token.
    const nodeCommand = await admin.getByTestId('start-command').inputValue();
    if (env.enrolls) {
      const enrollment = await admin.getByTestId('enrollment').inputValue();
      assert.match(enrollment, /^httvps-enroll:/);
      assert.equal(nodeCommand, `NODE_ENROLL='${enrollment}' httvps-relay node`);
    } else {
      assert.equal(await admin.getByTestId('enrollment').count(), 0);
      assert.equal(nodeCommand, `NODE_TOKEN=${nodeToken} httvps-relay node --backend ${env.server.base}`);
    }
    await shot(admin, mode, '05-node-token');
    await admin.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
    await rowOf(admin, nodeName).waitFor();
    // Never heard from yet: the row says until when its token works.
    const pending = await rowOf(admin, nodeName).textContent();
    assert.match(pending, /never\s*token expires in 2[34] h/, pending);

    await admin.getByRole('button', { name: 'Register gateway' }).click();
    const gd = admin.getByRole('dialog');
    await gd.getByLabel('Region').selectOption(region.code);
    await gd.getByLabel('Name').fill(`gw-${suffix}`);
    await gd.getByLabel('Public URL').fill('https://gw1.example.test');
    // A lifetime other than the default: the dialog and the row say it.
    assert.equal(await gd.getByLabel('Token valid for (hours)').inputValue(), '24');
    await gd.getByLabel('Token valid for (hours)').fill('3');
    await gd.getByRole('button', { name: 'Register gateway' }).click();
    await admin.getByTestId('machine-token').waitFor();
    await admin.getByRole('dialog').getByText('start it within 3 h').waitFor();
    // The gateway's command carries the URL just registered, and, with a
    // public URL, its enrollment string.
    const gwCommand = await admin.getByTestId('start-command').inputValue();
    assert.ok(gwCommand.endsWith('--public-url https://gw1.example.test'), gwCommand);
    assert.ok(gwCommand.startsWith(env.enrolls ? "GATEWAY_ENROLL='httvps-enroll:" : 'GATEWAY_TOKEN='), gwCommand);
    await admin.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
    const gwRow = rowOf(admin, `gw-${suffix}`);
    await gwRow.waitFor();
    assert.match(await gwRow.textContent(), /never\s*token expires in [23] h/);
    await shot(admin, mode, '06-nodes');

    // Rotating: an out-of-range lifetime is refused and the old token
    // kept; a valid one gives a new token with that lifetime.
    await gwRow.getByRole('button', { name: 'Rotate token' }).click();
    const rd = admin.getByRole('dialog');
    await rd.getByLabel('Token valid for (hours)').fill('721');
    await rd.getByRole('button', { name: 'Rotate token' }).click();
    await rd.getByRole('alert').getByText(/enrollmentTtlHours.*720/).waitFor();
    await rd.getByLabel('Token valid for (hours)').fill('48');
    await rd.getByRole('button', { name: 'Rotate token' }).click();
    await admin.getByTestId('machine-token').waitFor();
    await admin.getByRole('dialog').getByText('start it within 48 h').waitFor();
    // A rotated token comes with its enrollment string too.
    assert.equal(await admin.getByTestId('enrollment').count(), env.enrolls ? 1 : 0);
    assert.ok(
      (await admin.getByTestId('start-command').inputValue()).endsWith('--public-url https://gw1.example.test'),
      'the rotated gateway command names its public URL',
    );
    await admin.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
    await gwRow.getByText(/token expires in 4[78] h/).waitFor();

    // Editing in place: a URL the server refuses keeps the dialog open
    // with the reason and changes nothing; a good one shows in the row.
    await gwRow.getByRole('button', { name: 'Edit' }).click();
    const ed = admin.getByRole('dialog');
    assert.equal(await ed.getByLabel('Public URL').inputValue(), 'https://gw1.example.test');
    await ed.getByLabel('Public URL').fill('https://gw2.example.test/path');
    await ed.getByRole('button', { name: 'Save' }).click();
    await ed.getByRole('alert').getByText(/publicUrl/).waitFor();
    await ed.getByLabel('Public URL').fill('https://gw2.example.test');
    await ed.getByRole('button', { name: 'Save' }).click();
    await gwRow.getByText('https://gw2.example.test').waitFor();
    const nodeRow = rowOf(admin, nodeName);
    await nodeRow.getByRole('button', { name: 'Edit' }).click();
    const ned = admin.getByRole('dialog');
    assert.equal(await ned.getByLabel('Host').inputValue(), '10.9.8.7');
    await ned.getByLabel('Port').fill('8389');
    await ned.getByRole('button', { name: 'Save' }).click();
    await nodeRow.getByText('10.9.8.7:8389').waitFor();

    // The region its machines belong to cannot be deleted (the reason is
    // shown, the region stays); it can be renamed, its code kept.
    await go(admin, 'Regions');
    const regionRow = rowOf(admin, region.code);
    await regionRow.getByRole('button', { name: 'Delete' }).click();
    const del = admin.getByRole('dialog');
    await del.getByRole('button', { name: 'Delete' }).click();
    await del.getByRole('alert').getByText(/delete them first/).waitFor();
    await del.getByRole('button', { name: 'Keep it' }).click();
    await regionRow.getByRole('button', { name: 'Rename' }).click();
    const ren = admin.getByRole('dialog');
    await ren.getByLabel('Name').fill(`${region.name} renamed`);
    await ren.getByRole('button', { name: 'Rename' }).click();
    await regionRow.getByText(`${region.name} renamed`).waitFor();
  });

  // The node's heartbeats, sent by the test with the node's token, every
  // second until told to stop (optionally with a last one at a given time).
  const heart = {
    last: 0,
    running: null,
    async beat() {
      const res = await fetch(`${base}/api/v1/outline/heartbeat`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${nodeToken}` },
        body: JSON.stringify({ version: 'browser-test', load: 3, bytes_in: 0, bytes_out: 0 }),
      });
      assert.equal(res.status, 200, await res.text());
      this.last = Date.now();
    },
    start() {
      let stopAt = Number.POSITIVE_INFINITY;
      const loop = (async () => {
        while (Date.now() + 1000 < stopAt) {
          await this.beat();
          await new Promise((r) => setTimeout(r, Math.min(1000, Math.max(0, stopAt - Date.now()))));
        }
        if (Number.isFinite(stopAt)) {
          await new Promise((r) => setTimeout(r, Math.max(0, stopAt - Date.now())));
          await this.beat();
        }
      })();
      loop.catch(() => undefined); // reported by stop()
      this.running = {
        /** Stops now, or after a last heartbeat at `at`; resolves with the last one's time. */
        stop: async (at = 0) => {
          stopAt = at;
          await loop;
          return this.last;
        },
      };
    },
  };
  heart.start();
  t.after(() => heart.running?.stop().catch(() => undefined));

  await t.test('the overview shows the node up, live', async () => {
    await go(admin, 'Overview');
    const status = rowOf(admin, nodeName).locator('.node-status');
    await status.getByText('up', { exact: true }).waitFor({ timeout: 10_000 });
    await rowOf(admin, nodeName).getByText('3 / 1000').waitFor({ timeout: 10_000 });
  });

  const userCtx = await b.context();
  collect(userCtx);
  const userPage = await userCtx.newPage();

  await t.test('sign-up closed by the admin: the form is gone and the API refuses; opened again', async () => {
    await go(admin, 'Settings');
    const state = admin.getByTestId('signup-state');
    await state.getByText('open').waitFor();
    await admin.getByRole('button', { name: 'Close sign-up' }).click();
    await state.getByText('closed').waitFor();
    await shot(admin, mode, '06b-settings-sign-up-closed');

    await userPage.goto(`${base}/console/`);
    await userPage.getByRole('button', { name: 'Sign in' }).waitFor();
    await userPage.getByRole('link', { name: 'Create one' }).waitFor({ state: 'detached', timeout: 5_000 });
    await userPage.goto(`${base}/console/signup`);
    await userPage.getByText('Sign-up is closed on this service').waitFor();
    assert.equal(await userPage.getByRole('button', { name: 'Create account' }).count(), 0, 'no sign-up form');
    await shot(userPage, mode, '06c-sign-up-closed');
    const refused = await gql(base, 'mutation($e:String!,$p:String!){signUp(email:$e,password:$p){id}}', {
      e: `mallory-${suffix}@example.com`,
      p: 'mallory-password-1',
    });
    assert.equal(refused.errors?.[0]?.extensions?.code, 'FORBIDDEN', JSON.stringify(refused));
    assert.equal(refused.data ?? null, null);

    await admin.getByRole('button', { name: 'Open sign-up' }).click();
    await state.getByText('open').waitFor();
  });

  await t.test('a new user signs up and has no plan yet', async () => {
    await userPage.goto(`${base}/console/`);
    await userPage.getByRole('link', { name: 'Create one' }).click();
    await userPage.getByLabel('Email').fill(user.email);
    await userPage.getByLabel('Password', { exact: true }).fill(user.password);
    await userPage.getByLabel('Password again').fill(user.password);
    await userPage.getByRole('button', { name: 'Create account' }).click();
    await userPage.getByRole('heading', { name: 'My plan' }).waitFor();
    await userPage.getByText('You have no plan yet').waitFor();
    await shot(userPage, mode, '07-user-no-plan');
    await userPage.getByRole('button', { name: 'Sign out' }).click();
    await userPage.getByRole('button', { name: 'Sign in' }).waitFor();
  });

  await t.test('the admin grants the plan to the new user', async () => {
    await go(admin, 'Subscriptions');
    await admin.getByRole('button', { name: 'Grant plan' }).click();
    const gd = admin.getByRole('dialog');
    await gd.getByLabel("User's email").fill(user.email);
    const planId = await gd.locator('option', { hasText: plan }).getAttribute('value');
    await gd.getByLabel('Plan').selectOption(planId);
    await gd.getByRole('button', { name: 'Grant plan' }).click();
    await rowOf(admin, user.email).waitFor();
    await shot(admin, mode, '08-subscriptions');
    const row = rowOf(admin, user.email);
    // Its plan changed in place: the plan's terms, offered among the others.
    await row.getByRole('button', { name: 'Plan', exact: true }).click();
    const cd = admin.getByRole('dialog');
    await cd.locator('option', { hasText: plan }).waitFor({ state: 'attached' });
    assert.equal(await cd.getByLabel('New plan').inputValue(), planId, 'the current plan to start from');
    await cd.getByRole('button', { name: 'Change plan' }).click();
    await admin.getByRole('dialog').waitFor({ state: 'detached' });
    await row.getByText('0 B of 50.0 GB (0%)').waitFor();
    // One subscription's traffic: an allowance of its own, then a new period.
    await row.getByRole('button', { name: 'Traffic' }).click();
    const td = admin.getByRole('dialog');
    const allowance = td.getByLabel('Allowance per period (GB)');
    assert.equal(await allowance.inputValue(), '50', "the plan's allowance to start from");
    await allowance.fill('75');
    await td.getByRole('button', { name: 'Set allowance' }).click();
    await row.getByText('0 B of 75.0 GB (0%)').waitFor();
    await row.getByRole('button', { name: 'Reset usage' }).click();
    await admin.getByRole('dialog').getByRole('button', { name: 'Reset usage' }).click();
    await admin.getByRole('dialog').waitFor({ state: 'detached' });
    await row.getByText('0 B of 75.0 GB (0%)').waitFor();
  });

  let links;
  let deviceToken;
  await t.test('the user signs in, sees the plan, adds a device and its QR codes decode to its links', async () => {
    await signIn(userPage, base, user);
    await userPage.getByRole('heading', { name: plan }).waitFor();
    // The subscription's own allowance, which the admin raised past the plan's.
    await userPage.getByText('of 75.0 GB').waitFor();
    await shot(userPage, mode, '09-user-plan');

    await go(userPage, 'My devices');
    await userPage.getByText('No devices yet').waitFor();
    await userPage.getByLabel('Name').fill('Pixel');
    await userPage.getByLabel('Platform').selectOption('android');
    const answer = userPage.waitForResponse(
      (r) => r.url().endsWith('/graphql') && (r.request().postData() ?? '').includes('registerDevice'),
      { timeout: 10_000 },
    );
    await userPage.getByRole('button', { name: 'Add device' }).click();
    const body = await (await answer).json();
    links = body.data.registerDevice.links;
    deviceToken = body.data.registerDevice.accessToken;
    assert.ok(links?.ssconf.startsWith('ssconf://') && links.sip002.startsWith('ss://'), JSON.stringify(body));
    const ssconf = userPage.locator('[data-testid=qr-ssconf][data-ready=true]');
    const sip002 = userPage.locator('[data-testid=qr-sip002][data-ready=true]');
    await ssconf.waitFor();
    await sip002.waitFor();
    assert.equal(await decodeQr(ssconf), links.ssconf);
    assert.equal(await decodeQr(sip002), links.sip002);
    assert.equal(await userPage.getByTestId('link-ssconf').inputValue(), links.ssconf);
    assert.equal(await userPage.getByTestId('link-sip002').inputValue(), links.sip002);
    await shot(userPage, mode, '10-device-links');
    await userPage.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
    await rowOf(userPage, 'Pixel').locator('.device-status').getByText('active').waitFor();
    await shot(userPage, mode, '11-user-devices');
  });

  await t.test('the user renames the device and back; its links stay', async () => {
    const rename = async (from, to) => {
      await rowOf(userPage, from).getByRole('button', { name: 'Rename' }).click();
      const form = userPage.getByRole('dialog');
      await form.getByLabel('Name').fill(to);
      await form.getByRole('button', { name: 'Rename' }).click();
      await form.waitFor({ state: 'detached' });
      await rowOf(userPage, to).waitFor();
    };
    await rename('Pixel', 'Pixel 9');
    await shot(userPage, mode, '11a-device-renamed');
    await rename('Pixel 9', 'Pixel');
    await rowOf(userPage, 'Pixel').locator('.device-status').getByText('active').waitFor();
  });

  // A second admin tab stays on the overview: its live feed is what the
  // admin sees while the tunnel opens and, later, closes.
  const feed = env.dataPlane ? await adminCtx.newPage() : null;
  const feedItem = (label, text) =>
    feed
      .getByTestId('activity-feed')
      .locator('li', { hasText: text })
      .filter({ has: feed.getByText(label, { exact: true }) })
      .first();
  let tunnel = null;
  t.after(async () => {
    await tunnel?.client.stop();
    tunnel?.echo.close();
  });

  await t.test('a tunnel opens: the admin sees the session live, the user sees its region and node', { skip: !env.dataPlane && 'no data plane in serve' }, async () => {
    await signIn(feed, base, env.admin);
    await feed.getByRole('heading', { name: 'Live activity' }).waitFor();
    await feed.evaluate(() => {
      window.__sameDocument = true;
    });
    const before = Number(await feed.getByTestId('open-sessions').textContent());
    const cell = rowOf(userPage, 'Pixel').locator('.device-placement');
    await cell.getByText('not connected').waitFor();
    await userPage.evaluate(() => {
      window.__sameDocument = true;
    });
    // Live operations are in place once the pages are idle.
    await feed.waitForLoadState('networkidle');
    await userPage.waitForLoadState('networkidle');

    const echo = await startEcho();
    // Region `local`: `up`'s own node (this test's other node is not real).
    const client = await startClient({
      base,
      deviceToken,
      caCert: env.dataPlane.caCert,
      forward: echo.addr,
      region: 'local',
    });
    tunnel = { echo, client };
    // The first tunnel waits for the client's device JWT and the gateway's TLS.
    assert.equal(await echoThrough(client.addr, 'through the tunnel', 45_000), 'through the tunnel');

    await feedItem('opened', user.email).waitFor({ timeout: 10_000 });
    // (The client may open more than one tunnel, each a session.)
    await until('the open-session count to grow', async () => Number(await feed.getByTestId('open-sessions').textContent()) > before);
    await shot(feed, mode, '11b-overview-session-opened');
    await cell.getByText('local-node').waitFor({ timeout: 10_000 });
    await cell.getByText('up', { exact: true }).waitFor();
    assert.equal(await userPage.evaluate(() => window.__sameDocument), true, 'no reload');
    await shot(userPage, mode, '11c-user-device-placed');
  });

  await t.test('the admin closes the session: it ends live in the feed, and the device connects again with a new one', { skip: !env.dataPlane && 'no data plane in serve' }, async () => {
    await go(admin, 'Sessions');
    await admin.getByRole('heading', { name: 'Sessions', exact: true }).waitFor();
    const close = admin.locator('tr', { hasText: user.email }).getByRole('button', { name: 'Close' }).first();
    await close.click();
    await admin.getByRole('dialog').getByRole('button', { name: 'Close session' }).click();
    await feedItem('closed', `${user.email}: session in local ended (closed by admin)`).waitFor({ timeout: 15_000 });
    await shot(admin, mode, '11d-session-closed-by-admin');
    // The client opens its next tunnel as ever: a new session.
    assert.equal(await echoThrough(tunnel.client.addr, 'after the close', 30_000), 'after the close');
    await rowOf(userPage, 'Pixel').locator('.device-placement').getByText('local-node').waitFor({ timeout: 10_000 });
  });

  // The sweeper marks a node down at its first run after the lease ran out,
  // so DOWN comes between the lease and the lease + 2 s after the last
  // heartbeat (plus the sweep's own work), depending on where that heartbeat
  // falls in the sweeper's 2 s cycle. The first stop shows the node go down
  // live and gives the cycle; the second puts the last heartbeat 0.4 s after
  // a sweep, and there the page must show DOWN within the lease + 2 s.
  await t.test('the node goes down on the overview within the lease + 2 s of its last heartbeat, without a reload', async () => {
    await go(admin, 'Overview');
    const status = rowOf(admin, nodeName).locator('.node-status');
    await status.getByText('up', { exact: true }).waitFor({ timeout: 10_000 });
    await admin.evaluate(() => {
      window.__sameDocument = true;
    });
    const budget = LEASE_MS + SWEEP_MS;

    const first = await heart.running.stop();
    const sweptAt = await whenStatusReads(admin, nodeName, 'down', first + budget + 3_000 - Date.now());
    t.diagnostic(`${mode}: first stop: node shown down ${sweptAt - first} ms after its last heartbeat`);

    heart.start();
    await status.getByText('up', { exact: true }).waitFor({ timeout: 10_000 });
    const cycles = Math.ceil((Date.now() + 3_000 - sweptAt) / SWEEP_MS);
    const last = await heart.running.stop(sweptAt + cycles * SWEEP_MS + 400);
    // Waits past the budget so a failure says by how much it was missed.
    const downAt = await whenStatusReads(admin, nodeName, 'down', last + budget + 10_000 - Date.now());
    const after = downAt - last;
    t.diagnostic(`${mode}: second stop: node shown down ${after} ms after its last heartbeat (budget ${budget} ms)`);
    assert.ok(after <= budget, `down after ${after} ms`);
    assert.equal(await admin.evaluate(() => window.__sameDocument), true, 'no reload');
    await shot(admin, mode, '12-overview-node-down');
  });

  await t.test("the user replaces the device's links: its tunnel closes, live in the feed and on the user's page", { skip: !env.dataPlane && 'no data plane in serve' }, async () => {
    const row = rowOf(userPage, 'Pixel');
    await row.locator('.device-placement').getByText('local-node').waitFor();
    await row.getByRole('button', { name: 'New links' }).click();
    await userPage.getByRole('dialog').getByRole('button', { name: 'Rotate token' }).click();
    await userPage.getByTestId('link-ssconf').waitFor();
    await userPage.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
    // The old token's sessions end; the gateway closes their tunnels.
    await feedItem('closed', `${user.email}: session in local ended (device revoked)`).waitFor({ timeout: 15_000 });
    await row.locator('.device-placement').getByText('not connected').waitFor({ timeout: 10_000 });
    assert.equal(await feed.evaluate(() => window.__sameDocument), true, 'no reload');
    assert.equal(await userPage.evaluate(() => window.__sameDocument), true, 'no reload');
    await shot(feed, mode, '12b-overview-session-closed');
    await shot(userPage, mode, '12c-user-device-not-connected');
    await assert.rejects(echoThrough(tunnel.client.addr, 'with the old token', 5_000));
  });

  await t.test("the admin revokes the device and the user's page shows it", async () => {
    await userPage.evaluate(() => {
      window.__sameDocument = true;
    });
    await go(admin, 'Users');
    await admin.getByLabel('Email contains').fill(user.email);
    await admin.getByRole('button', { name: 'Search' }).click();
    await admin.getByRole('link', { name: user.email }).click();
    await admin.getByRole('heading', { name: user.email }).waitFor();
    // The account's devices (its sessions' rows name the device too).
    const pixel = admin
      .getByRole('region', { name: 'Devices', exact: true })
      .locator('tr', { has: admin.getByRole('rowheader', { name: 'Pixel', exact: true }) });
    await pixel.waitFor();
    await admin.getByRole('heading', { name: 'Audit trail' }).waitFor();
    await admin.getByRole('cell', { name: 'grant_subscription' }).waitFor();
    await shot(admin, mode, '13-user-detail');
    await pixel.getByRole('button', { name: 'Revoke' }).click();
    await admin.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
    await pixel.locator('.device-status').getByText('revoked').waitFor();

    await rowOf(userPage, 'Pixel').locator('.device-status').getByText('revoked').waitFor({ timeout: 15_000 });
    assert.equal(await userPage.evaluate(() => window.__sameDocument), true, 'no reload');
    await shot(userPage, mode, '14-user-device-revoked');

  });

  await t.test('a session whose account is disabled ends cleanly, on the sign-in page', async () => {
    await admin.getByRole('button', { name: 'Disable account' }).click();
    await admin.getByRole('dialog').getByRole('button', { name: 'Disable account' }).click();
    await admin.getByRole('button', { name: 'Enable account' }).waitFor();
    // The user's page polls its devices: refused, then refused a refresh.
    await userPage.getByText('Your session ended. Sign in again.').waitFor({ timeout: 15_000 });
    await userPage.getByRole('button', { name: 'Sign in' }).waitFor();
    assert.deepEqual(await userPage.evaluate(() => Object.keys(sessionStorage)), [], 'the refresh token is forgotten');
    await shot(userPage, mode, '15-user-session-ended');
    await admin.getByRole('button', { name: 'Enable account' }).click();
    await admin.getByRole('dialog').getByRole('button', { name: 'Enable account' }).click();
    await admin.getByRole('button', { name: 'Disable account' }).waitFor();
  });

  await t.test('the other operator pages render', async () => {
    for (const [label, name, heading] of [
      ['Sessions', '16-sessions', 'Sessions'],
      ['Devices', '17-devices', 'Devices'],
      ['Audit log', '18-audit', 'Audit log'],
      ['My plan', '19-admin-my-plan', 'My plan'],
      ['Account', '20-account', 'Account'],
    ]) {
      await go(admin, label);
      await admin.getByRole('heading', { name: heading, exact: true }).waitFor();
      await admin.waitForLoadState('networkidle');
      await shot(admin, mode, name);
    }
    await go(admin, 'Audit log');
    await admin.getByRole('cell', { name: 'create_plan' }).first().waitFor();
    await admin.getByLabel('Action').selectOption('revoke_device');
    await admin.getByRole('cell', { name: 'create_plan' }).first().waitFor({ state: 'detached' });
    await admin.getByRole('cell', { name: 'revoke_device' }).waitFor();
  });

  await t.test('the admin creates an account and sets its password; it signs in with the one set', async () => {
    const made = { email: `made-${Date.now()}@example.com`, password: 'a first password' };
    await go(admin, 'Users');
    await admin.getByRole('button', { name: 'New account' }).click();
    const form = admin.getByRole('dialog');
    await form.getByLabel('Email').fill(made.email);
    await form.getByLabel('First password').fill(made.password);
    await form.getByRole('button', { name: 'Create account' }).click();
    await admin.getByRole('heading', { name: made.email }).waitFor();
    await admin.getByRole('button', { name: 'Set password' }).click();
    const set = admin.getByRole('dialog');
    await set.getByLabel('New password').fill('the password set by an admin');
    await shot(admin, mode, '20b-set-password');
    await set.getByRole('button', { name: 'Set password' }).click();
    await set.waitFor({ state: 'detached' });
    const ctx = await b.context();
    collect(ctx);
    const p = await ctx.newPage();
    await signIn(p, base, { email: made.email, password: 'the password set by an admin' });
    await ctx.close();
  });

  await t.test('pages fit a 360 px screen, long names with no break point included', async () => {
    // A region's name of 100 letters and an address of 196 characters, as
    // the API takes them.
    const auth = await gql(base, 'mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}', {
      e: env.admin.email,
      p: env.admin.password,
    });
    const token = auth.data?.login?.accessToken;
    assert.ok(token, JSON.stringify(auth));
    const longRegion = 'W'.repeat(100);
    const madeRegion = await gql(base, 'mutation($c:String!,$n:String!){createRegion(code:$c,name:$n){id}}', { c: `long-${suffix}`, n: longRegion }, token);
    assert.ok(madeRegion.data?.createRegion?.id, JSON.stringify(madeRegion));
    const longEmail = `${'a'.repeat(64)}@${'b'.repeat(63)}.${'c'.repeat(63)}.com`;
    const madeUser = await gql(base, 'mutation($e:String!,$p:String!){createUser(email:$e,password:$p){id}}', { e: longEmail, p: 'a long address password' }, token);
    const longId = madeUser.data?.createUser?.id;
    assert.ok(longId, JSON.stringify(madeUser));

    const narrow = await b.context({ viewport: { width: 360, height: 740 }, deviceScaleFactor: 2 });
    collect(narrow);
    const p = await narrow.newPage();
    await signIn(p, base, env.admin);
    await p.getByRole('heading', { name: 'Overview' }).waitFor();
    await p.getByRole('heading', { name: longRegion }).waitFor();
    await p.waitForLoadState('networkidle');
    const fits = () => p.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
    // What sticks out, for the assertion's message.
    const wide = () =>
      p.evaluate(() =>
        [...document.querySelectorAll('body *')]
          .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
          .slice(-3)
          .map((e) => `${e.tagName.toLowerCase()}.${e.className}: ${Math.round(e.getBoundingClientRect().right)} px "${(e.textContent ?? '').slice(0, 40)}"`)
          .join('; '),
      );
    assert.ok(await fits(), `overview fits: ${await wide()}`);
    await shot(p, mode, '21-narrow-overview');
    await p.goto(`${base}/console/users/${longId}`);
    await p.getByRole('heading', { name: longEmail }).waitFor();
    await p.locator('.breadcrumbs').getByText(longEmail).waitFor();
    assert.ok(await fits(), `a long address's page fits: ${await wide()}`);
    await shot(p, mode, '21a-narrow-long-address');
    await p.getByRole('button', { name: 'Menu' }).click();
    await p.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Nodes' }).click();
    await p.getByRole('heading', { name: 'Nodes and gateways' }).waitFor();
    assert.ok(await fits(), `nodes fit: ${await wide()}`);
    await shot(p, mode, '22-narrow-nodes');
    await p.getByRole('button', { name: 'Sign out' }).click();
    await p.getByRole('button', { name: 'Sign in' }).waitFor();
    // The top bar signs out this browser only: the admin's other sign-in
    // goes on (it signed out every browser of the account, unasked).
    await go(admin, 'Plans');
    await rowOf(admin, plan).waitFor();
    await signIn(p, base, user);
    await p.getByRole('button', { name: 'Menu' }).click();
    await p.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'My devices' }).click();
    await rowOf(p, 'Pixel').waitFor();
    assert.ok(await fits(), `my devices fit: ${await wide()}`);
    await shot(p, mode, '23-narrow-my-devices');
    // Past the plan's device limit the form says so; once a device is
    // revoked that error goes (it stood beside a form that now works).
    const refused = p.locator('#add-title ~ .note.error');
    const done = p.getByRole('dialog').getByRole('button', { name: 'Done' });
    const spares = [];
    let limited = false;
    for (let i = 1; i <= 6 && !limited; i++) {
      const name = `Spare ${i}`;
      await p.getByLabel('Name').fill(name);
      await p.getByRole('button', { name: 'Add device' }).click();
      const outcome = await Promise.race([
        done.waitFor().then(() => 'added', () => 'none'),
        refused.waitFor().then(() => 'refused', () => 'none'),
      ]);
      if (outcome === 'added') {
        await done.click();
        await rowOf(p, name).waitFor();
        spares.push(name);
      } else {
        limited = outcome === 'refused';
        break;
      }
    }
    assert.ok(limited && spares.length > 0, `the device limit reached after ${spares.length} devices`);
    for (const name of spares.reverse()) {
      await rowOf(p, name).getByRole('button', { name: 'Revoke' }).click();
      await p.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
      await rowOf(p, name).locator('.device-status').getByText('revoked').waitFor();
      await refused.waitFor({ state: 'detached' });
    }
  });

  await t.test('long names wrap in their cells; a form the browser stops drops its last error', async () => {
    const auth = await gql(base, 'mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}', {
      e: env.admin.email,
      p: env.admin.password,
    });
    const token = auth.data?.login?.accessToken;
    assert.ok(token, JSON.stringify(auth));
    const longPlan = `${'P'.repeat(90)}${suffix}`;
    const madePlan = await gql(base, 'mutation($n:String!){createPlan(input:{name:$n,priceCents:"0",durationDays:30,deviceLimit:2}){id}}', { n: longPlan }, token);
    assert.ok(madePlan.data?.createPlan?.id, JSON.stringify(madePlan));
    const longEmail = `wrap-${suffix}-${'x'.repeat(40)}@${'d'.repeat(63)}.example.com`;
    const madeUser = await gql(base, 'mutation($e:String!,$p:String!){createUser(email:$e,password:$p){id}}', { e: longEmail, p: 'a long address password' }, token);
    assert.ok(madeUser.data?.createUser?.id, JSON.stringify(madeUser));
    const ctx = await b.context({ viewport: { width: 1280, height: 900 } });
    collect(ctx);
    const p = await ctx.newPage();
    await signIn(p, base, env.admin);
    await p.getByRole('heading', { name: 'Overview' }).waitFor();
    // Every table within its box: the other columns (a plan's Edit and
    // Archive, a user's role and status) stay in view.
    const tablesFit = () =>
      p.evaluate(() => [...document.querySelectorAll('.table-wrap')].map((w) => [w.scrollWidth, w.clientWidth]));
    for (const [path, name] of [
      ['/console/plans', longPlan],
      ['/console/users', longEmail],
    ]) {
      await p.goto(`${base}${path}`);
      await p.getByText(name).first().waitFor();
      for (const [scroll, box] of await tablesFit()) {
        assert.ok(scroll <= box + 1, `${path}: a table ${scroll} px wide in a box of ${box} px`);
      }
    }
    // A refused attempt's error, then an attempt the browser stops (too
    // short): the old error goes, it named a mistake no longer made.
    await p.goto(`${base}/console/account`);
    await p.getByLabel('Current password').fill('not the current password at all');
    await p.getByLabel('New password', { exact: true }).fill('abcdefghijk1');
    await p.getByLabel('New password again').fill('abcdefghijk1');
    await p.getByRole('button', { name: 'Change password' }).click();
    const stale = p.getByRole('alert').filter({ hasText: 'current password is wrong' });
    await stale.waitFor();
    await p.getByLabel('Current password').fill(env.admin.password);
    await p.getByLabel('New password', { exact: true }).fill('short');
    await p.getByLabel('New password again').fill('short');
    await p.getByRole('button', { name: 'Change password' }).click();
    await stale.waitFor({ state: 'detached' });
    await ctx.close();
  });

  await t.test('a throttled refresh keeps the session: the console waits as told and signs in again', async () => {
    const ctx = await b.context();
    collect(ctx);
    const p = await ctx.newPage();
    await signIn(p, base, env.admin);
    const answers = [];
    p.on('response', async (r) => {
      if (!(r.request().postData() ?? '').includes('refreshToken(token')) return;
      try {
        answers.push((await r.json()).errors?.[0]?.extensions?.code ?? 'ok');
      } catch {
        // the page went away
      }
    });
    // Junk refresh tokens from this address until the server throttles
    // refreshes from it, and on while the page reloads.
    const junk = () => gql(base, 'mutation{refreshToken(token:"junk-junk-junk-junk"){accessToken}}');
    let refused = null;
    for (let i = 0; i < 200 && !refused; i++) {
      const r = await junk();
      if (r.errors?.[0]?.extensions?.code === 'LIMIT_EXCEEDED') refused = r.errors[0].extensions;
    }
    assert.ok(refused, 'refreshes from this address were throttled');
    assert.equal(typeof refused.retryAfter, 'number', JSON.stringify(refused));
    let flooding = true;
    const flood = (async () => {
      while (flooding) {
        await junk();
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    // The allowance refills one refresh a second, which the page's own
    // refresh could catch between two junk ones: right before it leaves,
    // junk takes whatever refilled.
    await ctx.route('**/graphql', async (route) => {
      if (flooding && (route.request().postData() ?? '').includes('refreshToken(token')) {
        for (let i = 0; i < 5; i++) {
          if ((await junk()).errors?.[0]?.extensions?.code === 'LIMIT_EXCEEDED') break;
        }
      }
      await route.continue();
    });
    try {
      await p.reload();
      await p.getByText('Too many attempts just now').waitFor({ timeout: 10_000 });
      await until('a throttled refresh in the page', () => answers.includes('LIMIT_EXCEEDED'), 5_000);
      assert.ok(
        await p.evaluate((k) => sessionStorage.getItem(k) !== null, REFRESH_KEY),
        'the refresh token is kept',
      );
      await shot(p, mode, '23b-refresh-throttled');
    } finally {
      flooding = false;
      await flood;
    }
    // The allowance refills: the console's own retry signs in, no reload.
    await p.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 30_000 });
    assert.equal(await p.getByText('Your session ended').count(), 0);
    await ctx.close();
  });

  await t.test('GraphiQL renders from the embedded assets, only where it should', async () => {
    const html = readFileSync(join(ROOT, 'console/dist/graphiql.html'), 'utf8');
    const script = /src="(\/console\/assets\/graphiql-[^"]+\.js)"/.exec(html)?.[1];
    assert.ok(script, 'the GraphiQL bundle');
    const page = await fetch(`${base}/graphiql`);
    const asset = await fetch(`${base}${script}`);
    if (!env.debug) {
      assert.equal(page.status, 404, 'no GraphiQL outside debug mode');
      assert.equal(asset.status, 404, "GraphiQL's files are not served outside debug mode");
      return;
    }
    assert.equal(page.status, 200);
    assert.equal(asset.status, 200);
    assert.match(page.headers.get('content-security-policy') ?? '', /^default-src 'self'/);
    const ctx = await b.context();
    const g = await ctx.newPage();
    const schema = g.waitForResponse(
      (r) => r.url().endsWith('/graphql') && (r.request().postData() ?? '').includes('IntrospectionQuery'),
      { timeout: 15_000 },
    );
    await g.goto(`${base}/graphiql`);
    await g.locator('.graphiql-container').waitFor({ timeout: 15_000 });
    const introspection = await (await schema).json();
    assert.equal(introspection.data?.__schema?.queryType?.name, 'Query', JSON.stringify(introspection).slice(0, 300));
    await g.getByRole('button', { name: /documentation explorer/i }).click();
    await g.getByText('A GraphQL schema provides a root type', { exact: false }).waitFor({ timeout: 10_000 });
    // A query runs (its editors then set inline styles: the CSP must let
    // them, or every run logs a violation, which the last test counts).
    const ran = g.waitForResponse(
      (r) => r.url().endsWith('/graphql') && !(r.request().postData() ?? '').includes('IntrospectionQuery'),
      { timeout: 15_000 },
    );
    await g.locator('.graphiql-query-editor').click();
    await g.keyboard.press('Control+Enter');
    await ran;
    await g.waitForTimeout(500);
    // Its tabs and variables (a password, for Login) stay in memory.
    assert.deepEqual(await g.evaluate(() => Object.keys(localStorage)), [], "nothing in GraphiQL's localStorage");
    await shot(g, mode, '24-graphiql');
  });

  await t.test('console answers carry the CSP, cache and encoding headers', async () => {
    const index = await fetch(`${base}/console/users/x`, { headers: { 'accept-encoding': 'br' } });
    assert.equal(index.status, 200, 'console routes fall back to the page');
    assert.equal(index.headers.get('content-encoding'), 'br');
    assert.equal(index.headers.get('cache-control'), 'no-cache');
    const csp = index.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:|\*/);
    const html = await index.text();
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
    const js = /src="(\/console\/assets\/console-[^"]+\.js)"/.exec(html)?.[1];
    const asset = await fetch(`${base}${js}`, { headers: { 'accept-encoding': 'gzip' } });
    assert.equal(asset.headers.get('content-encoding'), 'gzip');
    assert.equal(asset.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.match(asset.headers.get('content-type') ?? '', /^text\/javascript/);
    assert.equal((await fetch(`${base}/console/assets/missing-0000.js`)).status, 404);
    const root = await fetch(`${base}/`, { redirect: 'manual' });
    assert.equal(root.headers.get('location'), '/console/');
    const api = await gql(base, '{ __typename }');
    assert.equal(api.data?.__typename, 'Query', 'the console does not shadow /graphql');
  });

  await t.test('nothing left the origin, no CSP violation, no page error, no token in a URL', async () => {
    for (const ctx of [adminCtx, userCtx]) {
      for (const p of ctx.pages()) {
        const stored = await p.evaluate(() => ({ local: { ...localStorage }, session: { ...sessionStorage } }));
        assert.deepEqual(Object.keys(stored.local), [], 'nothing in localStorage');
        for (const v of Object.values(stored.session)) {
          assert.ok(!/^eyJ/.test(v), 'no access JWT in sessionStorage');
        }
      }
    }
    assert.deepEqual(b.report.external, [], 'requests to other origins');
    assert.deepEqual(b.report.csp, [], 'CSP violations');
    assert.deepEqual(b.report.errors, [], 'page errors');
    assert.ok(seen.size >= 4, 'credentials were seen');
    if (env.tokenMinutes === 1) {
      // The console refreshes a 60 s token at four fifths of its life: a
      // run quicker than that waits for it (bounded).
      for (let i = 0; i < 600 && refreshed < 1; i++) await new Promise((r) => setTimeout(r, 100));
      t.diagnostic(`${mode}: ${refreshed} access-token refreshes during the run`);
      assert.ok(refreshed >= 1, 'short-lived access tokens were refreshed');
    }
    for (const url of b.report.urls) {
      for (const secret of seen) assert.ok(!url.includes(secret), `a credential in ${url}`);
    }
  });
}

test('the console against httvps up (SQLite, debug)', { timeout: 300_000 }, async (t) => {
  await scenario(t, 'up', await startUp());
});

test('the console against httvps serve on PostgreSQL (production mode)', { timeout: 300_000 }, async (t) => {
  await scenario(t, 'serve-pg', await startServe());
});
