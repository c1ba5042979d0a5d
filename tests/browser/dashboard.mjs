// Drives the dashboard in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/browser/dashboard.mjs <base-url> <login-url> <screenshot.png>
// Logs in through the one-time login URL first. Prints one JSON line with what it saw;
// exits non-zero on any failed check. Then checks the layout at 1400 × 900 and 420 × 900 with
// every section expanded and a 500-line log open: nothing may stick out past the window
// unless it is inside its own scroll box (screenshots next to <screenshot.png>:
// dashboard-1400.png, dashboard-420.png).
import { chromium } from 'playwright-core';
import path from 'node:path';

const [base, loginUrl, shot] = process.argv.slice(2);
if (!base || !loginUrl || !shot) {
  console.error('usage: dashboard.mjs <base-url> <login-url> <screenshot.png>');
  process.exit(2);
}
const executablePath = process.env.HYPERHIVE_CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = { dialogs: [], errors: [], layout: {} };

// Runs in the page: what sticks out past the window's right edge. The page itself must not
// scroll sideways, and an element whose right edge is past the viewport counts unless an
// ancestor that clips or scrolls (its own scroll box) ends inside the viewport.
function overflowReport() {
  const se = document.scrollingElement;
  const vw = se.clientWidth;
  const out = [];
  if (se.scrollWidth > se.clientWidth) out.push(`page: scrollWidth ${se.scrollWidth} > clientWidth ${se.clientWidth}`);
  const name = (el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}${el.classList.length ? `.${[...el.classList].join('.')}` : ''}`;
  const boxed = (el) => {
    for (let p = el.parentElement; p && p !== document.body && p !== document.documentElement; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if (ox !== 'visible') return p.getBoundingClientRect().right <= vw + 0.5;
    }
    return false;
  };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= vw + 0.5) continue;
    if (boxed(el)) continue;
    let where = '';
    for (let p = el.parentElement; p && !where; p = p.parentElement) {
      where = p.dataset.agent || p.dataset.agentMore || p.id || '';
    }
    out.push(`${name(el)} in ${where || '?'}: right ${Math.round(r.right)} > ${vw}`);
    if (out.length > 20) break;
  }
  return out;
}

// Opens every section: all describe / logs / config blocks, history, every diff; waits until
// each lazy block has its answer.
async function expandAll(page) {
  await page.evaluate(() => {
    for (const d of document.querySelectorAll('details:not([open])')) {
      if (d.matches('[data-lazy]')) d.querySelector(':scope > summary').click();
      else d.open = true;
    }
  });
  await page.waitForFunction(() => [...document.querySelectorAll('details[data-lazy]')].every(
    (d) => d.open && d.querySelector('.lazy-out').children.length > 0
      && !d.querySelector('[data-lazy-refresh]').classList.contains('busy'),
  ));
}

async function layoutAt(page, width, shotPath) {
  await page.setViewportSize({ width, height: 900 });
  await expandAll(page);
  const res = {};
  res.overflow = await page.evaluate(overflowReport);
  // the check itself catches a too-wide element (else a broken check would pass everything)
  await page.evaluate(() => {
    const probe = document.createElement('div');
    probe.id = 'overflow-probe';
    probe.style.width = '3000px';
    probe.textContent = 'probe';
    document.querySelector('main').append(probe);
  });
  res.selfTest = (await page.evaluate(overflowReport)).some((o) => o.includes('overflow-probe'));
  await page.evaluate(() => document.getElementById('overflow-probe').remove());
  res.logLines = await page.$eval('details[data-key="logs-alice"] pre.logs', (p) => p.textContent.trimEnd().split('\n').length);
  res.logScrollsInside = await page.$eval('details[data-key="logs-alice"] pre.logs', (p) => {
    const r = p.getBoundingClientRect();
    return p.scrollWidth > p.clientWidth && p.scrollHeight > p.clientHeight && r.right <= document.scrollingElement.clientWidth;
  });
  // every lifecycle button (start / restart / kill / update) is within the window's width
  res.buttonsOnScreen = await page.$$eval('tr[data-agent] .lifecycle button, tr[data-agent] .badges button', (bs) => {
    const vw = document.scrollingElement.clientWidth;
    return bs.length > 0 && bs.every((b) => { const r = b.getBoundingClientRect(); return r.left >= 0 && r.right <= vw && r.width > 0; });
  });
  if (!shotPath) return res;
  // the screenshot: logs open for alice, the other blocks closed again (keeps it readable)
  await page.evaluate(() => {
    for (const d of document.querySelectorAll('details[data-lazy][open]')) {
      if (d.dataset.key !== 'logs-alice') d.open = false;
    }
    document.querySelectorAll('.toast').forEach((t) => t.remove());
    window.scrollTo(0, 0);
  });
  res.overflowScreenshot = await page.evaluate(overflowReport);
  await page.screenshot({ path: shotPath, fullPage: true });
  return res;
}
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, colorScheme: 'dark' });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => seen.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') seen.errors.push(`console: ${m.text()}`); });
  page.on('dialog', async (d) => {
    seen.dialogs.push(`${d.type()}: ${d.message()}`);
    await (d.type() === 'prompt' ? d.accept('not needed') : d.accept());
  });

  // without a session: the page says how to log in, the API answers 401
  let r = await page.goto(base, { waitUntil: 'domcontentloaded' });
  seen.anonStatus = r.status();
  seen.anonText = await page.textContent('body');
  seen.anonApi = (await page.request.get(`${base}/api/state`)).status();
  seen.anonErrors = seen.errors.splice(0); // the 401 itself is logged as a console error
  // the login URL sets the session and lands on the dashboard
  r = await page.goto(loginUrl, { waitUntil: 'domcontentloaded' });
  seen.loginLanded = new URL(page.url()).pathname;
  seen.cookies = (await page.context().cookies()).map((c) => ({
    name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path,
  }));
  seen.cookieVisibleToScript = await page.evaluate(() => document.cookie.includes('hyperhive_session'));

  // agents table
  await page.waitForSelector('tr[data-agent="alice"]');
  seen.agents = await page.$$eval('tr[data-agent]', (rows) => rows.map((r) => r.dataset.agent));
  seen.aliceNeedsUpdate = await page.isVisible('tr[data-agent="alice"] button.badge.update');
  seen.aliceLink = await page.getAttribute('tr[data-agent="alice"] a[target=_blank]', 'href');
  seen.bobProblem = await page.textContent('tr[data-agent="bob"] .agent-sub');
  seen.bobCrashLoop = await page.textContent('tr[data-agent="bob"] .badge.crash');
  seen.bobLoginHref = await page.getAttribute('tr[data-agent="bob"] a.badge.login', 'href');
  seen.bobUiHref = await page.getAttribute('tr[data-agent="bob"] a[title^="open"]', 'href');
  seen.managerDanger = await page.$$eval('tr[data-agent-more="manager"] .danger-zone', (x) => x.length);
  seen.aliceDanger = await page.$$eval('tr[data-agent-more="alice"] .danger-zone button', (b) => b.map((x) => x.textContent));
  seen.kept = await page.$$eval('#kept tr[data-tombstone]', (rows) => rows.map((r) => r.dataset.name));
  // badges say what the agent is; the deployed column shows the arrow only for an outdated agent
  seen.badges = await page.$$eval('tr[data-agent]', (rows) => Object.fromEntries(rows.map((r) => [
    r.dataset.agent, [...r.querySelectorAll('.badges .badge')].map((b) => b.textContent.trim()),
  ])));
  seen.deployed = await page.$$eval('tr[data-agent] td.c-deployed', (tds) => Object.fromEntries(tds.map((td) => [
    td.closest('tr').dataset.agent, td.textContent.replace(/\s+/g, ' ').trim(),
  ])));

  // ↳ logs: lazy-loaded journal, auto-scrolled to the bottom; then the whole machine journal
  const logs = 'details[data-key="logs-alice"]';
  const logsHave = (text) => page.waitForFunction(([sel, t]) => {
    const pre = document.querySelector(`${sel} pre.logs`);
    return pre && pre.textContent.includes(t);
  }, [logs, text]);
  await page.click(`${logs} > summary`);
  await logsHave('hyperhive-agent[412]: turn');
  seen.logLines = await page.$eval(`${logs} pre.logs`, (p) => p.textContent.split('\n').length);
  seen.logsAtBottom = await page.$eval(`${logs} pre.logs`, (p) => p.scrollTop > 0 && p.scrollHeight - p.scrollTop - p.clientHeight < 4);
  seen.logsMeta = await page.textContent(`${logs} .lazy-meta`);
  await page.selectOption(`${logs} select[data-lazy-param="unit"]`, 'machine');
  await logsHave('systemd[1]: Started');
  await page.click(`${logs} [data-lazy-refresh]`);
  await page.waitForFunction((sel) => !document.querySelector(`${sel} [data-lazy-refresh]`).classList.contains('busy'), logs);

  // ↳ config: manifest, agent.nix (or why there is none), rendered settings
  for (const who of ['alice', 'bob']) {
    const cfg = `details[data-key="config-${who}"]`;
    await page.click(`${cfg} > summary`);
    await page.waitForSelector(`${cfg} .cfg`);
    seen[`${who}Config`] = await page.$$eval(`${cfg} .cfg > div`, (divs) => divs.map((d) => d.textContent));
    await page.click(`${cfg} > summary`); // closed again: keeps the screenshot short
  }

  // ↳ describe: full conditions, deploys with their tags, recent events
  const desc = 'details[data-key="describe-bob"]';
  await page.click(`${desc} > summary`);
  await page.waitForSelector(`${desc} table.conds-full tbody tr`);
  seen.bobReasons = await page.$$eval(`${desc} table.conds-full tbody tr td:nth-child(3)`, (t) => t.map((x) => x.textContent));
  seen.bobDeployTags = await page.$$eval(`${desc} .desc-cols > div:first-child td:first-child`, (t) => t.map((x) => x.textContent));
  seen.bobEvents = await page.$$eval(`${desc} .desc-cols > div:last-child td:first-child`, (t) => t.map((x) => x.textContent));

  // pending proposals with a colored diff
  await page.waitForSelector('[data-proposal="8"] pre.diff span.add');
  seen.proposals = await page.$$eval('[data-proposal]', (cards) => cards.map((c) => Number(c.dataset.proposal)));
  seen.diffAdds = await page.$$eval('[data-proposal="8"] pre.diff span.add', (s) => s.map((x) => x.textContent));
  seen.diffDels = await page.$$eval('[data-proposal="8"] pre.diff span.del', (s) => s.map((x) => x.textContent));

  // live flow connected, backlog rendered
  await page.waitForSelector('#live.on');
  await page.waitForSelector('#flow .msg');

  // approve #7 (confirm dialog), the card goes away after the re-render
  await page.click('[data-proposal="7"] button.ok');
  await page.waitForSelector('[data-proposal="7"]', { state: 'detached' });
  await page.waitForSelector('.toast.ok');
  seen.approvedToast = await page.textContent('.toast.ok');

  // answer question #1 with a radio choice
  await page.check('[data-question="1"] input[value="sonnet"]');
  await page.click('[data-question="1"] button[type=submit]');
  await page.waitForSelector('[data-question="1"]', { state: 'detached' });

  // send a message; it must come back through the SSE flow
  const body = `hello from the browser test ${Date.now()}`;
  await page.selectOption('#send-to', 'alice');
  await page.fill('#send-body', body);
  await page.click('#send button[type=submit]');
  await page.waitForFunction(
    (text) => [...document.querySelectorAll('#flow .msg .body')].some((b) => b.textContent.includes(text)),
    body,
  );
  seen.sent = body;
  seen.lastFlowRoute = await page.$eval('#flow .msg:last-child .route', (e) => e.textContent.trim());
  seen.sendBodyCleared = (await page.inputValue('#send-body')) === '';

  // DESTR0Y carol (confirm accepted): her row goes, her state shows up under K3PT ST4TE, and the
  // redrawn agents table keeps the open blocks open, with their content and choices
  await page.click('tr[data-agent-more="carol"] .danger-zone form:first-child button');
  await page.waitForSelector('tr[data-agent="carol"]', { state: 'detached' });
  await page.waitForSelector('#kept tr[data-name="carol"]');
  seen.keptAfterDestroy = await page.$$eval('#kept tr[data-tombstone]', (rows) => rows.map((r) => r.dataset.name));
  seen.logsStillOpen = await page.$eval(logs, (d) => d.open);
  seen.logsStillMachine = await page.inputValue(`${logs} select[data-lazy-param="unit"]`);
  seen.logsStillFilled = await page.$eval(`${logs} pre.logs`, (p) => p.textContent.includes('systemd[1]'));
  seen.describeStillOpen = await page.$eval(desc, (d) => d.open && d.querySelectorAll('table.conds-full tr').length > 1);

  // PURG3 frank's kept state (confirm accepted)
  seen.frankId = await page.getAttribute('#kept tr[data-name="frank"]', 'data-tombstone');
  await page.click('#kept tr[data-name="frank"] button');
  await page.waitForSelector('#kept tr[data-name="frank"]', { state: 'detached' });
  await page.click(`${desc} > summary`); // close describe again: the screenshot shows logs

  // screenshot without transient toasts
  await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
  await page.mouse.move(0, 0);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(1300); // let the "fresh" flash fade
  await page.screenshot({ path: shot, fullPage: true });
  seen.screenshot = shot;

  // layout: 1400 × 900 and 420 × 900, every section expanded, a 500-line log open
  const dir = path.dirname(shot);
  seen.layout['1400'] = await layoutAt(page, 1400, path.join(dir, 'dashboard-1400.png'));
  seen.layout['420'] = await layoutAt(page, 420, path.join(dir, 'dashboard-420.png'));
  for (const w of [1024, 901, 900, 760, 320]) seen.layout[String(w)] = await layoutAt(page, w, null);
  for (const [w, res] of Object.entries(seen.layout)) {
    for (const o of [...res.overflow, ...(res.overflowScreenshot || [])]) seen.errors.push(`overflow at ${w}px: ${o}`);
    if (!res.selfTest) seen.errors.push(`overflow check at ${w}px missed a 3000px probe`);
    if (!res.logScrollsInside) seen.errors.push(`at ${w}px the 500-line log does not scroll inside its own box`);
    if (!res.buttonsOnScreen) seen.errors.push(`at ${w}px an agent's action button is off screen`);
  }
  await page.setViewportSize({ width: 1400, height: 900 });

  // alice's own UI through the dashboard: the controller's copy of the page, her API and
  // events forwarded to her socket (relative URLs under /agents/alice/)
  const ui = await context.newPage();
  const uiErrors = [];
  ui.on('pageerror', (e) => uiErrors.push(`pageerror: ${e.message}`));
  ui.on('console', (m) => { if (m.type() === 'error') uiErrors.push(`console: ${m.text()}`); });
  await ui.goto(`${base}/agents/alice/`, { waitUntil: 'domcontentloaded' });
  await ui.waitForFunction(() => document.getElementById('agent-name').textContent === 'alice');
  seen.agentUiTitle = await ui.title();
  seen.agentUiErrors = uiErrors.filter((e) => /Content.Security.Policy|Refused/i.test(e));
  await ui.close();

  // the login URL works once: a second browser using it gets the 401 page
  const other = await browser.newPage();
  r = await other.goto(loginUrl, { waitUntil: 'domcontentloaded' });
  seen.reusedStatus = r.status();
  seen.reusedText = await other.textContent('body');
  await other.close();
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
if (seen.errors.length) process.exit(1);
