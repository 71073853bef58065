// A tiny headless "browser" for the sign-in flow of the end-to-end tests, without Chromium:
//
//   node tests/oidc/browse.mjs URL [--stop-at PREFIX]
//
// It GETs URL and follows redirects (301, 302, 303, 307, 308) itself, at most 20 hops, with a cookie
// jar per host:port that honours Set-Cookie's Path, Secure, Max-Age and deletions; an HTML page that
// only auto-submits a POST form (response_mode=form_post) is submitted as a browser would. Extra CAs
// are trusted through node's own NODE_EXTRA_CA_CERTS. With --stop-at, a redirect (or auto-submitted
// form) to a URL starting with PREFIX is not followed: that URL is the result.
//
// Prints one JSON line {"status": N, "url": "...", "body": "..."} (the last response's status, the
// last URL fetched or the one stopped at, and the last body, cut to 64 KiB) and exits 0; a network
// error, a bad argument or too many hops print a message on stderr and exit 1.
// The rust side is `browse` in tests/support/src/idp.rs.

import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

const MAX_HOPS = 20;
const MAX_BODY = 64 * 1024;

function fail(message) {
  process.stderr.write(`browse.mjs: ${message}\n`);
  process.exit(1);
}

let parsed;
try {
  parsed = parseArgs({
    options: { 'stop-at': { type: 'string' } },
    allowPositionals: true,
    strict: true,
  });
} catch (error) {
  fail(error.message);
}
if (parsed.positionals.length !== 1) fail('usage: browse.mjs URL [--stop-at PREFIX]');
const stopAt = parsed.values['stop-at'];

// host:port -> Map("name path" -> {name, value, path, secure})
const jar = new Map();

function defaultPath(url) {
  const p = url.pathname;
  const slash = p.lastIndexOf('/');
  return slash <= 0 ? '/' : p.slice(0, slash);
}

function storeCookie(url, header) {
  const [pair, ...attrs] = header.split(';');
  const eq = pair.indexOf('=');
  if (eq <= 0) return;
  const name = pair.slice(0, eq).trim();
  const value = pair.slice(eq + 1).trim();
  let path = defaultPath(url);
  let secure = false;
  let deleted = false;
  for (const attr of attrs) {
    const [k, ...rest] = attr.split('=');
    const key = k.trim().toLowerCase();
    const v = rest.join('=').trim();
    if (key === 'path' && v.startsWith('/')) path = v;
    else if (key === 'secure') secure = true;
    else if (key === 'max-age' && Number(v) <= 0) deleted = true;
    // Only the deletion idiom (a date in the distant past) counts: the IdP's clock may be shifted
    // by hours on purpose, and its cookies must outlive that.
    else if (key === 'expires' && Date.parse(v) < Date.UTC(2000, 0, 1)) deleted = true;
  }
  const origin = url.host;
  if (!jar.has(origin)) jar.set(origin, new Map());
  const cookies = jar.get(origin);
  const id = `${name} ${path}`;
  if (deleted) cookies.delete(id);
  else cookies.set(id, { name, value, path, secure });
}

function pathMatches(requestPath, cookiePath) {
  if (requestPath === cookiePath) return true;
  if (!requestPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || requestPath[cookiePath.length] === '/';
}

function cookieHeader(url) {
  const cookies = jar.get(url.host);
  if (!cookies) return undefined;
  const send = [...cookies.values()]
    .filter((c) => pathMatches(url.pathname, c.path) && (!c.secure || url.protocol === 'https:'))
    .sort((a, b) => b.path.length - a.path.length)
    .map((c) => `${c.name}=${c.value}`);
  return send.length ? send.join('; ') : undefined;
}

function request(url, method, body) {
  const lib = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : null;
  if (!lib) fail(`unsupported scheme in ${url.href}`);
  const headers = { accept: 'text/html,application/json;q=0.9,*/*;q=0.8', 'user-agent': 'sallyport-browse' };
  const cookie = cookieHeader(url);
  if (cookie) headers.cookie = cookie;
  if (body !== undefined) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    headers['content-length'] = Buffer.byteLength(body);
  }
  return new Promise((resolve, reject) => {
    const req = lib.request(url, { method, headers, timeout: 30000 }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (chunk) => {
        if (size < MAX_BODY) chunks.push(chunk);
        size += chunk.length;
      });
      res.on('end', () => {
        for (const c of res.headers['set-cookie'] ?? []) storeCookie(url, c);
        const buf = Buffer.concat(chunks).subarray(0, MAX_BODY);
        resolve({ status: res.statusCode, headers: res.headers, body: buf.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timed out on ${method} ${url.href}`)));
    req.on('error', reject);
    req.end(body);
  });
}

const decodeEntities = (s) => s
  .replace(/&quot;/g, '"')
  .replace(/&#39;|&#x27;/g, "'")
  .replace(/&lt;/g, '<')
  .replace(/&gt;/g, '>')
  .replace(/&amp;/g, '&');

// An auto-submitting POST form, as oidc-provider writes for form_post: {action, body} or null.
function autoSubmitForm(res) {
  if (res.status !== 200 || !String(res.headers['content-type'] ?? '').includes('text/html')) {
    return null;
  }
  if (!/\.submit\(\)|onload\s*=/i.test(res.body)) return null;
  const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(res.body);
  if (!form) return null;
  const attr = (tag, name) => {
    const m = new RegExp(`\\b${name}\\s*=\\s*("([^"]*)"|'([^']*)')`, 'i').exec(tag);
    return m ? decodeEntities(m[2] ?? m[3]) : undefined;
  };
  if ((attr(form[1], 'method') ?? 'get').toLowerCase() !== 'post') return null;
  const action = attr(form[1], 'action');
  if (!action) return null;
  const fields = new URLSearchParams();
  for (const input of form[2].matchAll(/<input\b[^>]*>/gi)) {
    const name = attr(input[0], 'name');
    if (name !== undefined) fields.append(name, attr(input[0], 'value') ?? '');
  }
  return { action, body: fields.toString() };
}

let url;
try {
  url = new URL(parsed.positionals[0]);
} catch {
  fail(`not a URL: ${parsed.positionals[0]}`);
}

let method = 'GET';
let body;
try {
  for (let hop = 0; ; hop += 1) {
    if (hop > MAX_HOPS) fail(`more than ${MAX_HOPS} redirects, last at ${url.href}`);
    const res = await request(url, method, body);
    const location = res.headers.location;
    let next = null;
    if ([301, 302, 303, 307, 308].includes(res.status) && location) {
      next = { url: new URL(location, url) };
      // Like a browser: 307 and 308 repeat the method and body, the others turn into a GET.
      if (res.status === 307 || res.status === 308) next.method = method;
      else next.method = 'GET';
      next.body = next.method === 'GET' ? undefined : body;
    } else {
      const form = autoSubmitForm(res);
      if (form) next = { url: new URL(form.action, url), method: 'POST', body: form.body };
    }
    if (next === null) {
      process.stdout.write(`${JSON.stringify({ status: res.status, url: url.href, body: res.body })}\n`);
      break;
    }
    if (stopAt !== undefined && next.url.href.startsWith(stopAt)) {
      const stoppedBody = next.method === 'POST' ? (next.body ?? '') : res.body;
      process.stdout.write(
        `${JSON.stringify({ status: res.status, url: next.url.href, body: stoppedBody })}\n`,
      );
      break;
    }
    url = next.url;
    method = next.method;
    body = next.body;
  }
} catch (error) {
  fail(`${method} ${url.href}: ${error?.message ?? error}`);
}
