// A cross-origin attack in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/security/cross_origin.mjs <config.json>
//   config: {attack: URL of the attacker's page, dash: the dashboard's origin,
//            login: the URL `hyperhive dashboard` printed, out: where to write the result}
// Opens the attacker's page (another origin) twice in one browser: before the operator
// logs in and after (the login URL opened in the same browser), and records the answer
// the dashboard gave to every request the page made (the page itself only sees opaque
// answers). Writes one JSON document to cfg.out: {phases: {anonymous, logged_in}, login, errors}.
import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const executablePath = process.env.HYPERHIVE_CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // keep the attacker's cross-site iframes in the page's own renderer, so this CDP session
    // sees every form navigation (an out-of-process iframe reports some of them to a target
    // of its own). Cookies and SameSite are enforced in the network service either way.
    '--disable-site-isolation-trials', '--disable-features=IsolateOrigins,site-per-process'],
});
const out = { phases: {}, login: {}, errors: [] };
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  let seen = null; // set while the attacker's page runs
  const attackerOrigin = new URL(cfg.attack).origin;
  // the wire, as the browser's network stack saw it: every request of the attacker's page
  // that reached the dashboard (CORS preflights, and answers the browser then hid from
  // the page, like an image that is not one, included), with the dashboard's status
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  let wire = new Map();
  const sentHeaders = new Map();
  const rawStatus = new Map();
  cdp.on('Network.requestWillBeSent', (e) => {
    if (seen && e.request.url.startsWith(cfg.dash + '/')) {
      wire.set(e.requestId, { method: e.request.method, url: e.request.url.slice(cfg.dash.length),
        ctype: e.request.headers['Content-Type'] || null, type: e.type || null,
        doc: e.documentURL || '', initiator: e.initiator?.url || '' });
    }
  });
  let lastEvent = Date.now();
  const answered = new Map(); // status from the response (the page-visible one)
  const failed = new Map();
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    sentHeaders.set(e.requestId, e.headers);
    lastEvent = Date.now();
  });
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    rawStatus.set(e.requestId, e.statusCode);
    lastEvent = Date.now();
  });
  cdp.on('Network.responseReceived', (e) => {
    answered.set(e.requestId, e.response.status);
    lastEvent = Date.now();
  });
  cdp.on('Network.loadingFailed', (e) => {
    failed.set(e.requestId, e.errorText);
    lastEvent = Date.now();
  });
  // until the network events have been quiet for half a second (at most 5 s)
  const settle = async () => {
    const until = Date.now() + 5000;
    while (Date.now() - lastEvent < 500 && Date.now() < until) await page.waitForTimeout(100);
  };
  const wireOf = () => {
    const out = [];
    for (const [id, w] of wire) {
      const h = Object.fromEntries(Object.entries(sentHeaders.get(id) || {}).map(([k, v]) => [k.toLowerCase(), v]));
      const from = h.origin || h.referer || w.doc || w.initiator;
      if (!from.startsWith(attackerOrigin)) continue; // the dashboard's own page, being left
      // the status on the wire; else the one the response carried; null: never answered
      const status = rawStatus.get(id) ?? answered.get(id) ?? null;
      out.push({ ...w, status, sent: sentHeaders.has(id), failure: failed.get(id) || null,
        from, cookie: 'cookie' in h });
    }
    return out;
  };
  page.on('pageerror', (e) => out.errors.push(`pageerror: ${e.message}`));

  async function attack(phase) {
    seen = true;
    await page.goto(cfg.attack, { waitUntil: 'domcontentloaded' });
    const done = await page.waitForFunction(() => window.attackDone, null, { timeout: 240000 });
    const page_saw = await done.jsonValue();
    await settle(); // late network events
    out.phases[phase] = { wire: wireOf(), page: page_saw };
    wire = new Map();
    seen = null;
  }

  async function dashboardStatus(path) {
    return page.evaluate(async (p) => (await fetch(p)).status, path);
  }

  await attack('anonymous');

  // the operator logs in with the URL `hyperhive dashboard` printed, in this same browser
  const landed = await page.goto(cfg.login, { waitUntil: 'domcontentloaded' });
  out.login.landed = page.url();
  out.login.status = landed ? landed.status() : null;
  out.login.cookies = (await context.cookies(cfg.dash)).map((c) => ({
    name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path }));
  out.login.state = await dashboardStatus('/api/state');
  out.login.agentUi = await dashboardStatus('/agents/manager/api/state');

  await attack('logged_in');

  // still logged in (the cross-site logout posts did nothing), and the operator's own
  // page still works
  await page.goto(cfg.dash + '/', { waitUntil: 'domcontentloaded' });
  out.login.stateAfter = await dashboardStatus('/api/state');
} catch (e) {
  out.errors.push(String(e && e.stack || e));
} finally {
  await browser.close();
}
writeFileSync(cfg.out, JSON.stringify(out));
process.exit(out.errors.length ? 1 : 0);
