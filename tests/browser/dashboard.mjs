// The dashboard's browser test: an approver follows the link of a
// notification, signs in, reads the request (metrics, gates), cannot be made
// to approve by a forged form, approves, and then sees the new stage on the
// model page and the approval in the verified audit trail; a reader sees the
// request but no way to decide it, and the reader's open page turns to
// Approved by itself (live refresh) when the approver decides.
//
// Run by tests/dashboard.rs, which starts the server, arranges the request
// and passes everything through the environment:
//   BASE_URL        the dashboard, http://host:port
//   REQUEST_URL     the link the notification carried (…/requests/MODEL:VERSION)
//   APPROVER_TOKEN  bearer token of an approver (bob)
//   READER_TOKEN    bearer token of a reader (rita)
//   SCREENSHOT_DIR  where request.png and model.png go
//   FAILURE_DIR     optional; where failure.png goes (default: the OS temp dir)
//   MODEL, VERSION  the request's model and version
//   CHROMIUM        optional; defaults to Debian's /usr/bin/chromium
//
// It drives Debian's Chromium through playwright-core and never downloads a
// browser. The element ids and classes it looks for are the page contract
// the dashboard implements (server/src/dashboard).
//
// Exit status: 0 when every check holds; 1 (with the URL, the page's <main>
// text and failure.png in FAILURE_DIR) at the first that does not.

import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const APPROVER = 'bob';
const READER = 'rita';
const COMMENT = 'metrics checked in the dashboard';

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`dashboard.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const BASE_URL = env('BASE_URL').replace(/\/+$/, '');
const REQUEST_URL = env('REQUEST_URL');
const APPROVER_TOKEN = env('APPROVER_TOKEN');
const READER_TOKEN = env('READER_TOKEN');
const SCREENSHOT_DIR = env('SCREENSHOT_DIR');
const MODEL = env('MODEL');
const VERSION = env('VERSION');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FAILURE_DIR = process.env.FAILURE_DIR || tmpdir();

const REQUEST_ID = `${MODEL}:${VERSION}`;
const REQUEST_PATH = `/requests/${REQUEST_ID}`;

/** Throws with `message` unless `condition` holds. */
function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

/** A URL's path, percent-decoded (a colon may arrive as %3A). */
function pathOf(url) {
  return decodeURIComponent(new URL(url).pathname);
}

/** The whitespace-normalised visible text of the first match of `selector`. */
async function textOf(page, selector) {
  const locator = page.locator(selector).first();
  check((await locator.count()) > 0, `no ${selector} on ${page.url()}`);
  return (await locator.innerText()).replace(/\s+/g, ' ').trim();
}

/** The class list of the first match of `selector`. */
async function classesOf(page, selector) {
  const locator = page.locator(selector).first();
  check((await locator.count()) > 0, `no ${selector} on ${page.url()}`);
  return ((await locator.getAttribute('class')) || '').split(/\s+/).filter(Boolean);
}

/** The number of matches of `selector`. */
async function count(page, selector) {
  return page.locator(selector).count();
}

/** Whether `text` contains `word`, ignoring case. */
function mentions(text, word) {
  return text.toLowerCase().includes(word.toLowerCase());
}

/** Signs in with `token` on the sign-in page `page` shows; returns where it lands. */
async function signIn(page, token) {
  check(
    (await count(page, 'form#signin')) === 1,
    `expected form#signin on ${page.url()}`,
  );
  const field = page.locator('form#signin input[name=token]');
  check((await field.count()) === 1, 'form#signin has no input[name=token]');
  check(
    (await field.getAttribute('type')) === 'password',
    'the token field is not a password field',
  );
  await field.fill(token);
  await Promise.all([
    page.waitForURL((url) => pathOf(url.href) !== '/signin'),
    page.locator('form#signin button[type=submit]').click(),
  ]);
  return page.url();
}

/** POSTs `body` to the request's decide URL from inside the page (its cookies go along). */
async function postDecide(page, body) {
  return page.evaluate(
    async ({ path, body }) => {
      const response = await fetch(path, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body,
        redirect: 'manual',
      });
      return response.status;
    },
    { path: `${REQUEST_PATH}/decide`, body },
  );
}

async function main() {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  mkdirSync(FAILURE_DIR, { recursive: true });
  // launch() gives the browser a fresh temporary profile and removes it on
  // close (Playwright refuses --user-data-dir in args).
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
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
  let page = null;
  const steps = [];
  try {
    // 1. The approver follows the link; not signed in, the dashboard sends
    //    them to the sign-in page and back.
    const approver = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    approver.setDefaultTimeout(15_000);
    const approverPage = await approver.newPage();
    page = approverPage;
    const first = await page.goto(REQUEST_URL);
    check(first !== null, `no response for ${REQUEST_URL}`);
    const redirect = first.request().redirectedFrom();
    check(redirect !== null, `${REQUEST_URL} did not redirect a visitor without a session`);
    const redirectStatus = (await redirect.response())?.status();
    check(redirectStatus === 303, `the redirect to sign in was ${redirectStatus}, not 303`);
    check(pathOf(page.url()) === '/signin', `redirected to ${page.url()}, not /signin`);
    const next = new URL(page.url()).searchParams.get('next');
    check(next === REQUEST_PATH, `the sign-in page's next is ${next}, not ${REQUEST_PATH}`);
    const landed = await signIn(page, APPROVER_TOKEN);
    check(pathOf(landed) === REQUEST_PATH, `signing in led to ${landed}, not ${REQUEST_PATH}`);
    steps.push(`${APPROVER} signed in through the redirect and is back on ${REQUEST_PATH}`);

    // 2. The request page: who, metrics against production, gates, the form.
    check(mentions(await textOf(page, '#whoami'), APPROVER), `#whoami does not name ${APPROVER}`);
    const auc = await textOf(page, 'table#metrics tr[data-metric="auc"]');
    check(auc.includes('0.93'), `the auc row lacks the candidate's 0.93: "${auc}"`);
    check(auc.includes('0.91'), `the auc row lacks production's 0.91: "${auc}"`);
    const gates = await count(page, 'ul#gates li.gate');
    check(gates > 0, 'no ul#gates li.gate');
    const passingAuc = await page
      .locator('ul#gates li.gate.pass')
      .filter({ hasText: 'auc' })
      .count();
    check(passingAuc > 0, 'no passing gate (li.gate.pass) mentions auc');
    const csrf = page.locator('form#decide input[name=csrf]');
    check((await csrf.count()) === 1, 'form#decide has no input[name=csrf]');
    check((await csrf.getAttribute('type')) === 'hidden', 'the csrf field is not hidden');
    check(((await csrf.getAttribute('value')) || '').length > 0, 'the csrf field is empty');
    for (const selector of [
      'form#decide textarea[name=comment]',
      'form#decide button[name=decision][value=approve]',
      'form#decide button[name=decision][value=reject]',
    ]) {
      check((await count(page, selector)) === 1, `no ${selector}`);
    }
    await page.screenshot({ path: join(SCREENSHOT_DIR, 'request.png'), fullPage: true });
    steps.push(`the request page shows auc 0.93 vs 0.91, ${gates} gate(s), the decide form`);

    // 3. Forged posts carry the session cookie but not the form's token.
    const noToken = await postDecide(page, 'decision=approve&comment=forged');
    check(noToken === 403, `a decide POST without csrf answered ${noToken}, not 403`);
    const wrongToken = await postDecide(page, 'decision=approve&comment=forged&csrf=forged-token');
    check(wrongToken === 403, `a decide POST with a wrong csrf answered ${wrongToken}, not 403`);
    steps.push('decide POSTs without or with a wrong csrf token were refused with 403');

    // 4. A reader sees the pending request but no way to decide it. (Checked
    //    while the request is still pending: afterwards nobody sees buttons.)
    const reader = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    reader.setDefaultTimeout(15_000);
    const readerPage = await reader.newPage();
    page = readerPage;
    await readerPage.goto(`${BASE_URL}/signin?next=${REQUEST_PATH}`);
    const readerLanded = await signIn(readerPage, READER_TOKEN);
    check(
      pathOf(readerLanded) === REQUEST_PATH,
      `the reader's sign-in led to ${readerLanded}, not ${REQUEST_PATH}`,
    );
    check(mentions(await textOf(readerPage, '#whoami'), READER), `#whoami does not name ${READER}`);
    check(
      (await count(readerPage, 'table#metrics tr[data-metric="auc"]')) > 0,
      'the reader does not see the request (no auc row)',
    );
    check(
      (await count(readerPage, 'button[value=approve]')) === 0,
      'the reader is offered an approve button',
    );
    // The reader's page stays open: it must refresh itself when bob decides.
    // The marker lives only as long as this document, so it proves no reload.
    await readerPage.evaluate(() => {
      window.__sameDocument = true;
    });
    page = approverPage;
    steps.push(`${READER} (reader) sees the request without an approve button`);

    // 5. The approver approves with a comment.
    await page.locator('form#decide textarea[name=comment]').fill(COMMENT);
    await page.locator('form#decide button[name=decision][value=approve]').click();
    await page.locator('#outcome').waitFor();
    const outcomeClasses = await classesOf(page, '#outcome');
    check(outcomeClasses.includes('ok'), `#outcome has classes [${outcomeClasses}], not ok`);
    const outcome = await textOf(page, '#outcome');
    check(/approved/i.test(outcome), `#outcome does not say approved: "${outcome}"`);
    const modelPath = `/models/${MODEL}`;
    const links = await page.locator('a[href]').evaluateAll((anchors) => anchors.map((a) => a.href));
    check(
      links.some((href) => pathOf(href) === modelPath),
      `the result page does not link to ${modelPath}`,
    );
    steps.push(`approved: "${outcome}"`);

    // 5b. Live: the reader's open page shows the approval without a reload,
    //     fed by the server-sent events of the registry's event log.
    page = readerPage;
    await readerPage.waitForFunction(
      () => {
        const status = document.querySelector('#status');
        return window.__sameDocument === true && status && status.textContent.trim() === 'Approved';
      },
      null,
      { timeout: 15_000 },
    );
    check(
      (await readerPage.evaluate(() => window.__sameDocument)) === true,
      "the reader's page was reloaded instead of refreshed in place",
    );
    await reader.close();
    page = approverPage;
    steps.push(`${READER}'s open request page turned to Approved by itself (SSE)`);

    // 6. The model page shows the version in production and the metric chart.
    await page.goto(`${BASE_URL}${modelPath}`);
    const stage = await textOf(page, `table#versions tr[data-version="${VERSION}"] td.stage`);
    check(stage.toLowerCase() === 'production', `version ${VERSION}'s stage is "${stage}"`);
    check((await count(page, 'svg#metric-chart')) > 0, 'no svg#metric-chart on the model page');
    await page.screenshot({ path: join(SCREENSHOT_DIR, 'model.png'), fullPage: true });
    steps.push(`${modelPath} shows version ${VERSION} in Production and the metric chart`);

    // 7. The audit trail: the chain verifies, the approval is there, by bob.
    await page.goto(`${BASE_URL}/audit?model=${encodeURIComponent(MODEL)}`);
    const chain = await classesOf(page, '#chain');
    check(chain.includes('verified'), `#chain has classes [${chain}], not verified`);
    const approvals = page
      .locator('table#events tr[data-type="TRANSITION_APPROVED"]')
      .filter({ hasText: APPROVER });
    check((await approvals.count()) > 0, `no TRANSITION_APPROVED row by ${APPROVER}`);
    await page.goto(
      `${BASE_URL}/audit?model=${encodeURIComponent(MODEL)}&actor=${encodeURIComponent(APPROVER)}`,
    );
    const rows = await page.locator('table#events tbody tr').allInnerTexts();
    check(rows.length > 0, `the audit filtered by actor=${APPROVER} is empty`);
    const strangers = rows.filter((row) => !mentions(row, APPROVER));
    check(
      strangers.length === 0,
      `actor=${APPROVER} shows rows of others: ${JSON.stringify(strangers)}`,
    );
    steps.push(`/audit: chain verified, approval by ${APPROVER}, ${rows.length} row(s) by ${APPROVER}`);

    console.log(`dashboard.mjs: all checks passed\n  ${steps.join('\n  ')}`);
    return 0;
  } catch (error) {
    console.error(`dashboard.mjs: FAILED: ${error.message}`);
    console.error(`  passed before: ${steps.length ? steps.join('; ') : 'nothing'}`);
    if (page && !page.isClosed()) {
      console.error(`  url: ${page.url()}`);
      const main = await page
        .locator('main')
        .first()
        .innerText({ timeout: 2_000 })
        .catch(() => '(no <main>)');
      console.error(`  <main>:\n${main}`);
      await page
        .screenshot({ path: join(FAILURE_DIR, 'failure.png'), fullPage: true, timeout: 5_000 })
        .then(() => console.error(`  screenshot: ${join(FAILURE_DIR, 'failure.png')}`))
        .catch((e) => console.error(`  no screenshot: ${e.message}`));
    }
    return 1;
  } finally {
    await browser.close();
  }
}

process.exitCode = await main();
