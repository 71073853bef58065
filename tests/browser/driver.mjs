// A real browser for Sallyport's end-to-end tests: Debian's Chromium (/usr/bin/chromium), headless,
// driven by playwright-core, one long-running process per test, steered over stdin/stdout.
//
//   node tests/browser/driver.mjs [--trust-cert CERT.pem]...
//
// When the browser is up it prints {"ready":true,"version":"<chromium version>"} on stdout. Then it
// reads one JSON command a line on stdin, {"id":N,"op":"...",...}, runs the commands one after the
// other in the order they came, and answers each with exactly one line: {"id":N,"ok":true,"value":V}
// or {"id":N,"ok":false,"error":"message"}. It closes the browser and exits when stdin closes.
// stdout carries nothing else; diagnostics go to stderr. Every command has a deadline (15000 ms, or
// its `timeout_ms`), so that a test never hangs on the browser. The ops are listed in `OPS` below and
// in README.md; the rust side is tests/support/src/browser.rs.
//
// TLS: the browser trusts no test CA. Instead each --trust-cert pins the public keys of the
// certificates in that PEM file with Chromium's --ignore-certificate-errors-spki-list (base64
// SHA-256 of each SubjectPublicKeyInfo DER): a certificate error on a connection whose presented
// chain holds one of those keys is ignored, and every other certificate error still fails the
// navigation. Pin the server's own certificate: a CA's key counts only when the server sends the CA
// certificate in its chain. We do not use Playwright's ignoreHTTPSErrors, which would accept any
// certificate from any server. Checked with Debian's Chromium 156, headless, against servers whose
// certificates come from a CA the browser does not know: pinned, the page loads; not pinned (no
// --trust-cert, another key, or only the CA pinned), goto fails with net::ERR_CERT_AUTHORITY_INVALID.
// Chromium's switch documentation ties it to --user-data-dir; 156 honours it without one, and
// Playwright passes its own temporary --user-data-dir to a launched Chromium anyway (and refuses one
// in `args`), so nothing more is needed.
//
// Pages under test have a strict Content-Security-Policy (`script-src 'self'`, no 'unsafe-eval').
// Playwright's evaluations go over CDP (Runtime.evaluate / Runtime.callFunctionOn), which the page's
// CSP does not govern, so axe-core is evaluated as a source string rather than added as a <script>
// tag (which `script-src 'self'` would block). What the page itself does from evaluated code is
// still governed by its CSP: the `fetch` op needs `connect-src` to allow the URL (`default-src
// 'none'` alone blocks it, and the op fails with "Failed to fetch").

import { X509Certificate, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

// Only protocol lines go to stdout: anything that logs goes to stderr instead.
console.log = console.error;
console.info = console.error;

const here = dirname(fileURLToPath(import.meta.url));
const DEFAULT_TIMEOUT_MS = 15000;
const CHROMIUM = '/usr/bin/chromium';

function log(message) {
  process.stderr.write(`driver.mjs: ${message}\n`);
}

const { values: args } = parseArgs({
  options: { 'trust-cert': { type: 'string', multiple: true, default: [] } },
  strict: true,
});

// base64(SHA-256(SubjectPublicKeyInfo DER)) of every certificate in each --trust-cert file.
const pins = [];
for (const file of args['trust-cert']) {
  const pem = readFileSync(file, 'utf8');
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    log(`--trust-cert ${file}: no PEM certificate in it`);
    process.exit(2);
  }
  for (const block of blocks) {
    const spki = new X509Certificate(block).publicKey.export({ type: 'spki', format: 'der' });
    pins.push(createHash('sha256').update(spki).digest('base64'));
  }
}

const launchArgs = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];
if (pins.length > 0) {
  launchArgs.push(`--ignore-certificate-errors-spki-list=${pins.join(',')}`);
}

// Read once; evaluated into a page on the first `axe` op there.
const AXE_SOURCE = readFileSync(join(here, 'node_modules/axe-core/axe.min.js'), 'utf8');
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];

let closing = false;
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: launchArgs,
  timeout: 60000,
});
browser.on('disconnected', () => {
  if (!closing) {
    log('the browser went away');
    process.exit(1);
  }
});

/** name -> { context, page, console: [{type, text}] } */
const contexts = new Map();

function person(cmd) {
  const entry = contexts.get(cmd.ctx);
  if (!entry) {
    throw new Error(`no context ${JSON.stringify(cmd.ctx)}: create it with the context op first`);
  }
  return entry;
}

function need(cmd, field, type = 'string') {
  if (typeof cmd[field] !== type) {
    throw new Error(`${cmd.op}: field ${field} (${type}) is required`);
  }
  return cmd[field];
}

// The first element that `selector` matches: every op on one element takes the first match, like
// `text` does, rather than failing when several match.
function first(page, cmd) {
  return page.locator(need(cmd, 'selector')).first();
}

async function mkdirFor(path) {
  await mkdir(dirname(path), { recursive: true });
}

// Waits until the first element matching the selector has innerText containing `text`, for any
// Playwright selector (page.waitForFunction would take CSS only). Each round
// waits for such an element to exist (a locator wait), then watches it from inside the page with a
// MutationObserver on the whole document (text, children and attributes: a class change can hide
// text), until the text appears, the element is replaced (an htmx swap: next round) or time is up.
// A navigation destroys the evaluation: the next round looks in the new document.
async function waitText(page, cmd, timeout) {
  const text = need(cmd, 'text');
  const loc = first(page, cmd);
  const deadline = Date.now() + timeout;
  let lastSeen = null;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) {
      break;
    }
    try {
      await loc.waitFor({ state: 'attached', timeout: left });
      const seen = await loc.evaluate(
        (el, { text, ms }) =>
          new Promise((resolve) => {
            const done = (result) => {
              observer.disconnect();
              clearTimeout(timer);
              resolve(result);
            };
            const check = () => {
              if (!el.isConnected) {
                done({ found: false, text: null });
              } else if (el.innerText.includes(text)) {
                done({ found: true, text: el.innerText });
              }
            };
            const observer = new MutationObserver(check);
            const timer = setTimeout(
              () => done({ found: false, text: el.isConnected ? el.innerText : null }),
              ms,
            );
            observer.observe(document, {
              subtree: true,
              childList: true,
              characterData: true,
              attributes: true,
            });
            check();
          }),
        { text, ms: Math.max(left, 1) },
        { timeout: left },
      );
      if (seen.text !== null) {
        lastSeen = seen.text;
      }
      if (seen.found) {
        return seen.text;
      }
    } catch (e) {
      if (Date.now() >= deadline || /Timeout/.test(e.name) || /Timeout \d+ms exceeded/.test(e.message)) {
        break;
      }
      // The document went away under us (navigation) or the element was swapped: look again.
    }
  }
  const shown = lastSeen === null ? 'no matching element' : `last seen text ${JSON.stringify(lastSeen)}`;
  throw new Error(
    `wait_text: ${JSON.stringify(cmd.selector)} did not show ${JSON.stringify(text)} within ${timeout} ms (${shown})`,
  );
}

/** op -> async (cmd, timeout) => value */
const OPS = {
  async context(cmd, timeout) {
    const name = need(cmd, 'ctx');
    if (contexts.has(name)) {
      throw new Error(`context ${JSON.stringify(name)} exists already`);
    }
    const width = cmd.width ?? 1280;
    const height = cmd.height ?? 800;
    const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
    context.setDefaultTimeout(timeout);
    context.setDefaultNavigationTimeout(timeout);
    const page = await context.newPage();
    const entry = { context, page, console: [] };
    // CSP violations arrive as console errors ("Refused to ...").
    page.on('console', (m) => entry.console.push({ type: m.type(), text: m.text() }));
    page.on('pageerror', (e) => entry.console.push({ type: 'pageerror', text: String(e.message ?? e) }));
    contexts.set(name, entry);
    return null;
  },

  async goto(cmd, timeout) {
    const { page } = person(cmd);
    const response = await page.goto(need(cmd, 'url'), { timeout, waitUntil: 'load' });
    return { status: response ? response.status() : null, url: page.url() };
  },

  // Playwright's click waits for a navigation the click started to commit (or fail), and returns at
  // once when it started none; the new document's load comes after.
  async click(cmd, timeout) {
    const { page } = person(cmd);
    await first(page, cmd).click({ timeout });
    await page.waitForLoadState('load', { timeout });
    return { url: page.url() };
  },

  async submit(cmd, timeout) {
    const { page } = person(cmd);
    // Listen before clicking, so that a fast navigation is not missed; the response is that of the
    // last hop of any redirects (a POST answered 303, then the GET).
    const navigation = page.waitForNavigation({ timeout, waitUntil: 'load' });
    navigation.catch(() => {});
    await first(page, cmd).click({ timeout });
    const response = await navigation;
    return { status: response ? response.status() : null, url: page.url() };
  },

  async fill(cmd, timeout) {
    const { page } = person(cmd);
    await first(page, cmd).fill(need(cmd, 'value'), { timeout });
    return null;
  },

  async select(cmd, timeout) {
    const { page } = person(cmd);
    return await first(page, cmd).selectOption(need(cmd, 'value'), { timeout });
  },

  async check(cmd, timeout) {
    const { page } = person(cmd);
    await first(page, cmd).check({ timeout });
    return null;
  },

  async text(cmd, timeout) {
    const { page } = person(cmd);
    return await first(page, cmd).innerText({ timeout });
  },

  async texts(cmd) {
    const { page } = person(cmd);
    return await page.locator(need(cmd, 'selector')).allInnerTexts();
  },

  async count(cmd) {
    const { page } = person(cmd);
    return await page.locator(need(cmd, 'selector')).count();
  },

  async attr(cmd, timeout) {
    const { page } = person(cmd);
    return await first(page, cmd).getAttribute(need(cmd, 'name'), { timeout });
  },

  async content(cmd) {
    return await person(cmd).page.content();
  },

  async url(cmd) {
    return person(cmd).page.url();
  },

  async title(cmd) {
    return await person(cmd).page.title();
  },

  async wait_text(cmd, timeout) {
    return await waitText(person(cmd).page, cmd, timeout);
  },

  async wait_gone(cmd, timeout) {
    const { page } = person(cmd);
    await page.waitForSelector(need(cmd, 'selector'), { state: 'detached', timeout });
    return null;
  },

  async wait_url(cmd, timeout) {
    const { page } = person(cmd);
    const part = need(cmd, 'contains');
    try {
      await page.waitForURL((u) => u.href.includes(part), { timeout, waitUntil: 'load' });
    } catch (e) {
      throw new Error(`wait_url: no URL containing ${JSON.stringify(part)} within ${timeout} ms (at ${page.url()}): ${e.message}`);
    }
    return page.url();
  },

  async screenshot(cmd, timeout) {
    const { page } = person(cmd);
    const path = need(cmd, 'path');
    await mkdirFor(path);
    await page.screenshot({ path, fullPage: cmd.full_page === true, timeout });
    return path;
  },

  async viewport(cmd) {
    const { page } = person(cmd);
    await page.setViewportSize({ width: need(cmd, 'width', 'number'), height: need(cmd, 'height', 'number') });
    return null;
  },

  async axe(cmd) {
    const { page } = person(cmd);
    // A string is evaluated as is (Runtime.evaluate), outside the page's CSP; axe.min.js then
    // defines window.axe.
    if (!(await page.evaluate('typeof window.axe === "object"'))) {
      await page.evaluate(AXE_SOURCE);
    }
    const tags = Array.isArray(cmd.tags) ? cmd.tags : AXE_TAGS;
    const violations = await page.evaluate(async (values) => {
      const result = await window.axe.run(document, { runOnly: { type: 'tag', values } });
      return result.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        // A target is a list of selectors, one per shadow root on the way; nested lists for iframes.
        nodes: v.nodes.map((n) => n.target.map((t) => (Array.isArray(t) ? t.join(' >>> ') : t)).join(' >>> ')),
      }));
    }, tags);
    return { violations };
  },

  async download(cmd, timeout) {
    const { page } = person(cmd);
    const path = need(cmd, 'path');
    const event = page.waitForEvent('download', { timeout });
    event.catch(() => {});
    await first(page, cmd).click({ timeout });
    const download = await event;
    const failure = await download.failure();
    if (failure) {
      throw new Error(`download: ${failure}`);
    }
    await mkdirFor(path);
    await download.saveAs(path);
    return { suggested_filename: download.suggestedFilename(), bytes: (await stat(path)).size };
  },

  async fetch(cmd) {
    const { page } = person(cmd);
    const request = {
      url: need(cmd, 'url'),
      method: cmd.method ?? 'GET',
      headers: cmd.headers ?? {},
      body: cmd.body ?? null,
    };
    return await page.evaluate(async ({ url, method, headers, body }) => {
      try {
        const r = await fetch(url, { method, headers, body, credentials: 'same-origin', redirect: 'follow' });
        return { status: r.status, body: await r.text() };
      } catch (e) {
        throw new Error(`fetch ${method} ${url}: ${e} (a network error, CORS, or the page's CSP connect-src)`);
      }
    }, request);
  },

  async console(cmd) {
    return [...person(cmd).console];
  },

  async close(cmd) {
    const entry = person(cmd);
    contexts.delete(cmd.ctx);
    await entry.context.close();
    return null;
  },
};

// Fails after `ms` even when the operation ignores its own timeout (page.evaluate has none).
function deadline(promise, ms, op) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${op}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

// Playwright colours its call logs for a terminal; the test prints them as they are.
function plain(text) {
  return text.replace(/\u001b\[[0-9;]*m/g, '');
}

function answer(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function run(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    answer({ id: null, ok: false, error: `not JSON: ${e.message}` });
    return;
  }
  const id = cmd?.id ?? null;
  const handler = typeof cmd?.op === 'string' && Object.hasOwn(OPS, cmd.op) ? OPS[cmd.op] : null;
  if (!handler) {
    answer({ id, ok: false, error: `unknown op ${JSON.stringify(cmd?.op)}` });
    return;
  }
  const timeout = Number.isInteger(cmd.timeout_ms) && cmd.timeout_ms > 0 ? cmd.timeout_ms : DEFAULT_TIMEOUT_MS;
  try {
    // A little grace over the op's own timeout, so that Playwright's message (with its call log)
    // is the one reported when both would fire.
    const value = await deadline(handler(cmd, timeout), timeout + 2000, cmd.op);
    answer({ id, ok: true, value: value ?? null });
  } catch (e) {
    answer({ id, ok: false, error: plain(String(e?.message ?? e)) });
  }
}

// One command at a time, in order: a test is a sequence of steps.
let queue = Promise.resolve();
const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', (line) => {
  if (line.trim() === '') {
    return;
  }
  queue = queue.then(() => run(line));
});
input.on('close', () => {
  queue.then(async () => {
    closing = true;
    try {
      await deadline(browser.close(), 10000, 'close');
    } catch (e) {
      log(`closing the browser: ${e.message}`);
    }
    process.exit(0);
  });
});

answer({ ready: true, version: browser.version() });
