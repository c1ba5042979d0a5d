// Drives the dashboard in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/browser/dashboard.mjs <base-url> <login-url> <screenshot.png>
// Logs in through the one-time login URL first. Prints one JSON line with what it saw;
// exits non-zero on any failed check.
import { chromium } from 'playwright-core';

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
const seen = { dialogs: [], errors: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, colorScheme: 'dark' });
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
