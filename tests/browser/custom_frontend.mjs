// Custom agent front-ends in headless Chromium (playwright-core, no bundled browser).
// usage: node tests/browser/custom_frontend.mjs <base-url> <login-url> <screenshot.png>
// Logs in, opens alice's extraFiles game (/agents/alice/game/) and bob's dist UI
// (/agents/bob/), and prints one JSON line with what the pages showed.
import { chromium } from 'playwright-core';

const [base, loginUrl, shot] = process.argv.slice(2);
const executablePath = process.env.HYPERHIVE_CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = { errors: [], requests: [] };
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => seen.errors.push(String(e)));
  page.on('request', (r) => seen.requests.push(new URL(r.url()).pathname));
  await page.goto(loginUrl);

  // alice: an extraFiles bundle, opened as the operator does: the link in her built-in UI
  await page.goto(`${base}/agents/alice/`);
  await page.waitForSelector('#extra-links a', { timeout: 15000 });
  seen.extraLinks = await page.$$eval('#extra-links a', (as) => as.map((a) => [a.textContent, a.href]));
  const resp = await page.goto(seen.extraLinks[0][1]);
  seen.gameStatus = resp.status();
  seen.gameUrl = new URL(page.url()).pathname;
  await page.waitForFunction(() => document.getElementById('report')?.textContent, null,
                             { timeout: 15000 });
  seen.gameTitle = await page.textContent('#title');
  seen.gameReport = JSON.parse(await page.textContent('#report'));
  await page.screenshot({ path: shot });

  // bob: frontend.dist replaces his whole UI; it talks to his agent through the bridge
  await page.goto(`${base}/agents/bob/`);
  seen.shellTitle = await page.title();
  await page.frameLocator('#hyperhive-ui').locator('#out').waitFor({ state: 'attached' });
  const bobFrame = page.frames().find((f) => f !== page.mainFrame());
  await bobFrame.waitForFunction(() => {
    const t = document.getElementById('out')?.textContent;
    if (!t) return false;
    const o = JSON.parse(t);
    return o.done && o.events.length > 0;
  }, null, { timeout: 15000 });
  seen.bobOut = JSON.parse(await bobFrame.textContent('#out'));
  seen.bobHeading = await bobFrame.textContent('h1');
  seen.bobFrameOrigin = await bobFrame.evaluate(() => self.origin);
  seen.bobCanReachParent = await bobFrame.evaluate(() => {
    try { return String(parent.document.title); } catch (e) { return 'blocked: ' + e.name; }
  });
} catch (e) {
  seen.fatal = String(e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
