// End-to-end test of the coordinator dashboard in headless Chromium.
//
// Started by tests/tests/integration/dashboard.rs with one argument: a JSON file naming the
// relay (`base`, `coalition`), a coordinator invite the page enrolls with, an observer
// credential, the `coalition` CLI and an enrolled NMAC store it drives, and where to save the
// screenshot. Each check prints `ok - ...` or throws; the process exits non-zero on the first
// failure and prints a summary line.
import { readFileSync, mkdirSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const base = cfg.base;
// How long the page may take to show something before the test fails. Waits end as soon as
// it is shown: the machine may be busy, and how fast the page is is printed, not judged here.
const WAIT = 60000;
const results = [];
let passed = 0;

function ok(cond, what) {
  if (!cond) throw new Error('FAILED: ' + what);
  passed += 1;
  results.push(what);
  console.log('ok - ' + what);
}
const get = (obj, path) => path.split('.').reduce((o, k) => (o === null || o === undefined ? o : o[k]), obj);

async function api(path, credential, options) {
  const res = await fetch(base + path, {
    ...(options || {}),
    headers: { Authorization: 'Bearer ' + credential, 'Content-Type': 'application/json' },
  });
  const text = await res.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* text */ }
  return { status: res.status, body };
}

function cli(args) {
  const out = spawnSync(cfg.cli, ['--store', cfg.nmac_store, ...args], { encoding: 'utf8', timeout: 60000 });
  if (out.status !== 0) throw new Error(`coalition ${args.join(' ')} failed (${out.status}): ${out.stderr}`);
  return out.stdout;
}
const cliJson = (args) => JSON.parse(cli(['--json', ...args]));
const sameConflict = (a, b) => a.collection === b.collection && a.id === b.id && a.field === b.field;

// Each browser gets a fresh profile directory, removed at the end.
const profiles = [];
async function launch(viewport) {
  const profile = join(tmpdir(), `coalition-dashboard-chromium-${process.pid}-${profiles.length}`);
  rmSync(profile, { recursive: true, force: true });
  mkdirSync(profile, { recursive: true });
  profiles.push(profile);
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: cfg.chromium || '/usr/bin/chromium',
    headless: true,
    viewport,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  ctx.setDefaultTimeout(WAIT);
  return ctx;
}
const open = [];

try {
  // A 10-inch tablet in landscape.
  const ctx = await launch({ width: 1280, height: 800 });
  open.push(ctx);
  const page = ctx.pages()[0] || await ctx.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const outside = [];
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('blob:') && !r.url().startsWith('data:')) outside.push(r.url()); });

  // ---- Enrollment from an invite, then sign-in ----
  await page.goto(base + '/');
  await page.keyboard.press('Tab');
  ok(await page.evaluate(() => document.activeElement && document.activeElement.classList.contains('skip')),
    'the first Tab focuses the skip link');
  await page.fill('#invite', cfg.coordinator_invite);
  await page.fill('#device', 'e2e tablet');
  await page.getByRole('button', { name: 'Enroll and sign in' }).click();
  const credential = (await page.locator('#new-credential').textContent({ timeout: WAIT })).trim();
  ok(credential.startsWith('cred-'), 'enrolling with an invite shows the new credential once');
  await page.getByRole('button', { name: 'Continue to the dashboard' }).click();
  await page.locator('#key-figures [data-path]').first().waitFor({ timeout: WAIT });
  ok(page.url().includes('/overview'), 'a coordinator with one coalition lands on its overview');

  // ---- The overview on a fresh load (signed in) ----
  const started = Date.now();
  await page.goto(base + '/#/c/' + cfg.coalition + '/overview');
  await page.reload();
  await page.locator('#key-figures [data-path]').first().waitFor({ timeout: WAIT });
  await page.locator('#view table').first().waitFor({ state: 'attached' });
  console.log(`# overview shown in ${Date.now() - started} ms`);

  // ---- The numbers on the overview are the API's ----
  const asOf = await page.inputValue('#asof');
  const report = (await api(`/api/v1/coalitions/${cfg.coalition}/report?as_of=${asOf}`, credential)).body;
  const shown = await page.$$eval('#view [data-path]', (els) => els.map((e) => ({
    path: e.getAttribute('data-path'), value: e.getAttribute('data-value'),
    // Chart shapes carry their value in a tooltip; text is compared on HTML figures.
    text: e.namespaceURI === 'http://www.w3.org/1999/xhtml' ? e.textContent : null,
  })));
  let compared = 0;
  for (const s of shown) {
    const want = get(report, s.path);
    const wantText = want === null || want === undefined ? null : String(want);
    if (s.value !== wantText) throw new Error(`FAILED: ${s.path} is ${s.value} on the page, ${wantText} in the API`);
    if (typeof want === 'number' && s.text) {
      const digits = s.text.replace(/[^0-9-]/g, '');
      if (digits !== String(Math.round(want))) throw new Error(`FAILED: ${s.path} reads "${s.text}", the API says ${want}`);
    }
    compared += 1;
  }
  const keyPaths = ['clearance.remaining_sha_m2', 'clearance.remaining_cha_m2', 'clearance.released_m2', 'stockpile.remaining',
    'deadline_risk.level', 'funding.0.gap_usd', 'clearance.by_year.0.cleared_m2', 'donor_matrix.0.pledged_usd'];
  for (const p of keyPaths) ok(shown.some((s) => s.path === p), `the overview shows ${p}`);
  ok(compared >= 60, `${compared} figures on the overview equal the API's report`);
  ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1),
    'the overview fits a 10-inch tablet without scrolling sideways');
  await page.screenshot({ path: cfg.screenshot, fullPage: true });
  console.log('# screenshot: ' + cfg.screenshot);

  // ---- Resolving a conflict in the page ----
  const before = (await api(`/api/v1/coalitions/${cfg.coalition}/conflicts`, credential)).body;
  ok(before.length >= 2, `the demo has conflicts to resolve (${before.length})`);
  cli(['sync', '--timeout', '30']);
  const cliBefore = cliJson(['conflicts']);
  ok(cliBefore.some((c) => sameConflict(c, before[0])), 'the synced CLI client sees the conflict before');
  await page.getByRole('link', { name: 'Conflicts' }).click();
  await page.locator('li.conflict').first().waitFor();
  ok(await page.locator('li.conflict').count() === before.length, 'the page lists every conflict of the API');
  const target = before[0];
  const key = `${target.doc}/${target.collection}/${target.id}/${target.field}`;
  const card = page.locator(`li.conflict[data-conflict="${key}"]`);
  const chosen = target.values[target.values.length - 1];
  ok((await card.locator('td.value').allTextContents()).includes(typeof chosen.value === 'string' ? chosen.value : JSON.stringify(chosen.value)),
    'the conflict shows its values');
  ok((await card.textContent()).includes(chosen.user), 'the conflict shows its authors');
  await card.locator(`button[data-change="${chosen.change}"]`).click();
  await card.waitFor({ state: 'detached', timeout: WAIT });
  ok(true, 'the resolved conflict disappears from the page');
  const after = (await api(`/api/v1/coalitions/${cfg.coalition}/conflicts`, credential)).body;
  ok(!after.some((c) => sameConflict(c, target)) && after.length === before.length - 1, 'the resolved conflict is gone from the API');
  const hist = (await api(`/api/v1/coalitions/${cfg.coalition}/history?entity=${target.id}`, credential)).body;
  const last = hist[hist.length - 1];
  ok(last.action === 'resolve' && last.user === 'amra.hodzic' && last.device === 'dashboard',
    'the decision is in the history, attributed to the coordinator on the dashboard');
  cli(['sync', '--timeout', '30']);
  const cliAfter = cliJson(['conflicts']);
  ok(!cliAfter.some((c) => sameConflict(c, target)), 'the resolved conflict is gone from a synced CLI client');

  // ---- A CLI edit appears on the open page without a reload ----
  await page.getByRole('link', { name: 'Hazard map' }).click();
  await page.locator('table.areas tbody tr').first().waitFor();
  await page.evaluate(() => { window.__noReload = true; });
  const areas = (await api(`/api/v1/coalitions/${cfg.coalition}/areas`, credential)).body.areas;
  const area = areas[areas.length - 1];
  const newName = 'Live edit ' + Math.random().toString(36).slice(2, 8);
  cli(['area', 'edit', '--id', area.id, '--name', newName]);
  cli(['sync', '--timeout', '30']);
  const synced = Date.now();
  await page.locator('.area-name', { hasText: newName }).waitFor({ timeout: WAIT });
  console.log(`# live update shown ${Date.now() - synced} ms after the CLI sync returned`);
  ok(await page.evaluate(() => window.__noReload === true), 'the CLI edit appears on the open page, which was not reloaded');

  // The other views load.
  for (const [tab, sel] of [['History', 'ol.timeline li.entry'], ['Sync health', '#view table'], ['Article 7', 'article.a7 table']]) {
    await page.getByRole('link', { name: tab }).click();
    await page.locator(sel).first().waitFor({ timeout: WAIT });
    ok(true, `the ${tab} view shows data`);
  }
  ok(pageErrors.length === 0, 'no script errors: ' + pageErrors.join('; '));
  ok(outside.length === 0, 'the page requests nothing outside the relay: ' + outside.join(', '));
  await ctx.close();

  // ---- An observer sees conflicts but cannot resolve them ----
  const octx = await launch({ width: 800, height: 1280 });
  open.push(octx);
  const opage = octx.pages()[0] || await octx.newPage();
  await opage.goto(base + '/');
  await opage.fill('#credential', cfg.observer_credential);
  await opage.getByRole('button', { name: 'Sign in', exact: true }).click();
  await opage.locator('#key-figures').waitFor({ timeout: WAIT });
  await opage.getByRole('link', { name: 'Conflicts' }).click();
  await opage.locator('li.conflict').first().waitFor();
  ok(await opage.locator('li.conflict').count() === after.length, "the observer sees the remaining conflicts");
  ok(await opage.locator('button.keep').count() === 0 && !(await opage.textContent('#view')).includes('Keep this value'),
    'the observer has no conflict resolution controls');
  const remaining = after[0];
  const refused = await api(`/api/v1/coalitions/${cfg.coalition}/conflicts/resolve`, cfg.observer_credential, {
    method: 'POST',
    body: JSON.stringify({ doc: remaining.doc, collection: remaining.collection, id: remaining.id, field: remaining.field, change: remaining.values[0].change }),
  });
  ok(refused.status === 403 && refused.body.error && refused.body.error.code === 'forbidden', 'the observer\'s POST is refused 403 forbidden');
  const still = (await api(`/api/v1/coalitions/${cfg.coalition}/conflicts`, credential)).body;
  ok(still.some((c) => sameConflict(c, remaining)), 'the refused resolution changed nothing');
  await octx.close();
} finally {
  for (const c of open) await c.close().catch(() => {});
  for (const p of profiles) rmSync(p, { recursive: true, force: true });
}
console.log(`dashboard: ${passed} passed, 0 failed`);
