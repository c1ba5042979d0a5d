// Drives the dashboard in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/browser/dashboard.mjs <base-url> <screenshot.png>
// Prints one JSON line with what it saw; exits non-zero on any failed check.
import { chromium } from 'playwright-core';

const [base, shot] = process.argv.slice(2);
if (!base || !shot) {
  console.error('usage: dashboard.mjs <base-url> <screenshot.png>');
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
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 }, colorScheme: 'dark' });
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => seen.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') seen.errors.push(`console: ${m.text()}`); });
  page.on('dialog', async (d) => {
    seen.dialogs.push(`${d.type()}: ${d.message()}`);
    await (d.type() === 'prompt' ? d.accept('not needed') : d.accept());
  });

  await page.goto(base, { waitUntil: 'domcontentloaded' });

  // agents table
  await page.waitForSelector('tr[data-agent="alice"]');
  seen.agents = await page.$$eval('tr[data-agent]', (rows) => rows.map((r) => r.dataset.agent));
  seen.aliceNeedsUpdate = await page.isVisible('tr[data-agent="alice"] button.badge.update');
  seen.aliceLink = await page.getAttribute('tr[data-agent="alice"] a[target=_blank]', 'href');
  seen.bobProblem = await page.textContent('tr[data-agent="bob"] .agent-sub');

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

  // screenshot without transient toasts
  await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
  await page.mouse.move(0, 0);
  await page.waitForTimeout(1300); // let the "fresh" flash fade
  await page.screenshot({ path: shot, fullPage: true });
  seen.screenshot = shot;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
if (seen.errors.length) process.exit(1);
