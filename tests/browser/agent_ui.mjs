// Drives one agent's web UI in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/browser/agent_ui.mjs main|login <base-url> <screenshot.png>
// Prints one JSON line with what it saw; exits non-zero on any failed wait or page error.
import { chromium } from 'playwright-core';

const [mode, base, shot] = process.argv.slice(2);
if (!mode || !base || !shot) {
  console.error('usage: agent_ui.mjs main|login <base-url> <screenshot.png>');
  process.exit(2);
}
const executablePath = process.env.HYPERHIVE_CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = { errors: [] };

const text = (page, sel) => page.$eval(sel, (e) => e.textContent.trim());
const lastText = (page, sel) => page.$$eval(sel, (es) => (es.length ? es[es.length - 1].textContent.trim() : ''));

async function command(page, line) {
  const before = await page.$$eval('#log .local', (r) => r.length);
  await page.fill('#prompt', line);
  await page.press('#prompt', 'Enter');
  // every command answers with a local line (an error keeps the prompt text for a retry)
  await page.waitForFunction((n) => document.querySelectorAll('#log .local').length > n
    && !document.getElementById('prompt').disabled, before);
  await page.fill('#prompt', '');
}

async function waitIdle(page, timeout = 90000) {
  await page.waitForSelector('#state-badge.state-idle', { timeout });
}

async function main(page) {
  // watch the state badge: every class it takes
  await page.addInitScript(() => {
    window.__states = [];
    document.addEventListener('DOMContentLoaded', () => {
      const b = document.getElementById('state-badge');
      new MutationObserver(() => {
        const s = [...b.classList].find((c) => c.startsWith('state-'));
        if (s && window.__states[window.__states.length - 1] !== s.slice(6)) window.__states.push(s.slice(6));
      }).observe(b, { attributes: true, attributeFilter: ['class'] });
    });
  });
  await page.goto(base, { waitUntil: 'domcontentloaded' });
  await waitIdle(page);

  // history backfilled: the first turn's tool calls, Write/Edit as collapsible diffs
  await page.waitForFunction(() => document.querySelectorAll('#log details.tool').length >= 2);
  await page.waitForSelector('#log .turn-end');
  seen.summaries = await page.$$eval('#log details.tool > summary', (s) => s.map((x) => x.textContent));
  seen.tools = await page.$$eval('#log .row.tool', (r) => r.map((x) => x.textContent));
  const edit = page.locator('#log details.tool', { hasText: '→ Edit' }).first();
  await edit.locator('summary').click();
  seen.editDiff = await edit.locator('.diff').innerText();
  await page.locator('#log details.tool', { hasText: '→ Write' }).first().locator('summary').click();
  seen.dashboardHref = await page.getAttribute('#dashboard-link', 'href');
  seen.inboxSummary = await text(page, '#inbox > summary');

  // /model sonnet: the chip changes at once (model_changed event + the answer)
  await command(page, '/model sonnet');
  await page.waitForFunction(() => document.getElementById('model-chip').textContent === 'model · sonnet');
  seen.modelChip = await text(page, '#model-chip');

  // a message from the prompt box: the reply streams into the live tail while the badge thinks
  await command(page, 'what is the plan for today?');
  await page.waitForFunction(() => {
    const s = document.querySelector('#log .say.streaming');
    return s && s.textContent.length > 30;
  }, null, { timeout: 60000 });
  seen.streamingText = await text(page, '#log .say.streaming');
  seen.badgeWhileStreaming = await text(page, '#state-badge');
  seen.cancelVisible = await page.isVisible('#cancel-btn');
  await waitIdle(page);
  await page.waitForFunction(() => document.querySelectorAll('#log .turn-end').length >= 2);
  seen.finalText = await lastText(page, '#log .say:not(.streaming)');
  seen.streamingLeft = await page.$$eval('#log .say.streaming', (s) => s.length);
  seen.badgeAfter = await text(page, '#state-badge');
  seen.states = await page.evaluate(() => window.__states);
  seen.ctx = await text(page, '#ctx-badge');
  seen.ctxTitle = await page.getAttribute('#ctx-badge', 'title');
  seen.lastTurn = await text(page, '#last-turn');

  // scrolled up, a new turn raises the "↓ N new" pill instead of moving the page
  await page.evaluate(() => document.querySelectorAll('#log details').forEach((d) => { d.open = true; }));
  const scrollable = await page.$eval('#terminal', (t) => t.scrollHeight > t.clientHeight + 100);
  if (!scrollable) await page.setViewportSize({ width: 1280, height: 520 });
  await page.$eval('#terminal', (t) => { t.scrollTop = 0; t.dispatchEvent(new Event('scroll')); });
  const turnsBefore = await page.$$eval('#log .turn-end', (r) => r.length);
  await page.evaluate(() => fetch('api/send', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ body: 'thanks, noted' }),
  }));
  await page.waitForSelector('#new-pill:not([hidden])', { timeout: 60000 });
  await page.waitForFunction((n) => document.querySelectorAll('#log .turn-end').length > n, turnsBefore, { timeout: 60000 });
  seen.pillText = await text(page, '#new-pill');
  seen.pillCount = Number(await text(page, '#new-n'));
  seen.stayedUp = await page.$eval('#terminal', (t) => t.scrollTop < 50);
  await page.click('#new-pill');
  seen.pillGone = await page.isHidden('#new-pill');
  seen.atBottom = await page.$eval('#terminal', (t) => t.scrollHeight - t.scrollTop - t.clientHeight < 40);
  await waitIdle(page);

  // the screenshot: the first turn (diffs open) and the streamed answer
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.evaluate(() => {
    const d = document.querySelectorAll('#log details');
    d.forEach((x) => { x.open = x.classList.contains('tool'); });
    const head = document.querySelectorAll('#log .turn-head')[0];
    const term = document.getElementById('terminal');
    term.scrollTop += head.getBoundingClientRect().top - term.getBoundingClientRect().top - 4;
  });
  await page.mouse.move(0, 0);
  await page.waitForTimeout(300);
  await page.screenshot({ path: shot });
  seen.screenshot = shot;

  // slash commands: /help lists them, /cancel when idle is refused
  await command(page, '/help');
  seen.help = await lastText(page, '#log .local');
  await command(page, '/cancel');
  seen.cancelIdle = await lastText(page, '#log .local.err');

  // the cancel button while a turn runs
  await command(page, 'endless please');
  await page.waitForSelector('#cancel-btn:not([hidden])', { timeout: 60000 });
  await page.waitForSelector('#log .say.streaming', { timeout: 60000 });
  await page.click('#cancel-btn');
  await page.waitForFunction(() => {
    const r = [...document.querySelectorAll('#log .turn-end')].pop();
    return r && r.textContent.includes('cancelled');
  }, null, { timeout: 60000 });
  seen.cancelledRow = await lastText(page, '#log .turn-end');
  seen.cutOff = await page.$$eval('#log .say.cut', (s) => s.length);
  await waitIdle(page);
}

async function login(page) {
  await page.goto(base, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#login-panel:not([hidden])');
  await page.waitForSelector('#alive-badge:not([hidden])');
  seen.badge = await text(page, '#alive-badge');
  seen.panelTitle = await text(page, '#login-title');
  await page.click('[data-login-method="claudeai"]');
  await page.waitForSelector('#login-url:not([hidden])', { timeout: 30000 });
  seen.url = await page.getAttribute('#login-url', 'href');
  seen.codeFormVisible = await page.isVisible('#login-code-form');
  await page.fill('#login-code', 'not-the-whole-code');
  await page.click('#login-code-form button[type=submit]');
  await page.waitForSelector('#log .local.err');
  seen.badCode = await lastText(page, '#log .local.err');
  await page.fill('#login-code', '');
  await page.evaluate(() => document.querySelectorAll('#log .local').forEach((e) => e.remove()));
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot });
  seen.screenshot = shot;
  await page.click('#login-cancel');
  await page.waitForSelector('#login-start:not([hidden])');
}

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, colorScheme: 'dark' });
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => seen.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // the refused /cancel (409) and the refused code (400) are expected; anything else fails
    if (m.type() === 'error' && !/status of 40[09]/.test(m.text())) seen.errors.push(`console: ${m.text()}`);
  });
  if (mode === 'main') await main(page);
  else await login(page);
} catch (e) {
  seen.errors.push(`failed: ${e.message}`);
  console.log(JSON.stringify(seen));
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log(JSON.stringify(seen));
if (seen.errors.length) process.exit(1);
