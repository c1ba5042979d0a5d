// The dashboard's SP3ND panel in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/budget/budget.mjs <base-url> <login-url> <screenshot.png>
// Logs in, reads alice's and bob's budget bars, grants alice an extension through the
// panel's form (a JSON POST), reads her bar again. Prints one JSON line with what it saw.
import { chromium } from 'playwright-core';

const [base, loginUrl, shot] = process.argv.slice(2);
const executablePath = process.env.HYPERHIVE_CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = { errors: [], posts: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('pageerror', (e) => seen.errors.push(String(e)));
  page.on('request', (r) => {
    if (r.method() === 'POST') seen.posts.push({ url: new URL(r.url()).pathname, type: r.headers()['content-type'], body: r.postData() });
  });
  await page.goto(loginUrl, { waitUntil: 'domcontentloaded' });
  const bar = (name) => page.evaluate((n) => {
    const row = document.querySelector(`#budget tr[data-budget="${n}"]`);
    if (!row) return null;
    const b = row.querySelector('.budget-bar');
    return {
      level: [...b.classList].filter((c) => c !== 'budget-bar'),
      now: Number(b.getAttribute('aria-valuenow')),
      width: b.querySelector('.fill').style.width,
      cells: [...row.querySelectorAll('td')].map((td) => td.textContent.trim()),
      form: !!row.querySelector('form[data-budget-allow]'),
    };
  }, name);
  await page.waitForSelector('#budget tr[data-budget="alice"] .budget-bar', { timeout: 15000 });
  seen.aliceBefore = await bar('alice');
  seen.bob = await bar('bob');
  seen.count = await page.textContent('#budget-count');
  await page.fill('#budget tr[data-budget="alice"] input[name=usd]', '1.5');
  await page.click('#budget tr[data-budget="alice"] button[type=submit]');
  await page.waitForSelector('.toast.ok', { timeout: 15000 });
  seen.toast = await page.textContent('.toast.ok');
  await page.waitForFunction(() => {
    const b = document.querySelector('#budget tr[data-budget="alice"] .budget-bar');
    return b && !b.classList.contains('exceeded');
  }, null, { timeout: 15000 });
  seen.aliceAfter = await bar('alice');
  await page.screenshot({ path: shot, fullPage: false });
  for (const width of [420, 320]) {
    await page.setViewportSize({ width, height: 900 });
    seen[`overflow${width}`] = await page.evaluate(() => document.scrollingElement.scrollWidth > document.scrollingElement.clientWidth);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
