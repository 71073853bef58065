// A real OpenID provider for Sallyport's end-to-end tests: one panva `oidc-provider` instance per
// process, on 127.0.0.1 port 0 over plain http, with one client, keys of its own, and no login UI.
//
//   node tests/oidc/idp.mjs --client-id ID [--client-secret S] [--groups-claim groups]
//                           [--ttl-id-token SECONDS] [--host localhost] [--login-page]
//
// `--host` names the IdP in its issuer (default 127.0.0.1; it listens on 127.0.0.1 either way):
// `localhost` makes it another site than a broker reached at 127.0.0.1, as a real IdP is. With
// `--login-page`, each sign-in first shows a page whose button (#idp-continue) signs the next
// person in, so the redirect back starts from the IdP's own page, as with a real IdP.
// When ready it prints exactly one JSON line, {"issuer":"http://127.0.0.1:PORT"}, on stdout; all
// else goes to stderr. Each authorization is signed in at once as the "next person" that the test
// set through the control API on the same port (test only):
//   POST /_test/next         {"sub","name","preferred_username","email","groups","amr","acr",
//                             "clock_offset_s"} : who signs in next, and how far the IdP's clock is
//                            shifted (seconds, e.g. -7200 for ID tokens that expired already)
//   GET  /_test/jwks         the public JWKS (the same keys as jwks_uri)
//   GET  /_test/last-id-token {"id_token": "..."} of the last ID token issued, or null
//   POST /_test/stop         ends the process
// The rust side is tests/support/src/idp.rs.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

// oidc-provider prints its notices with console.info (stdout): stdout carries only the ready line.
console.info = console.error;
console.log = console.error;

const { values: args } = parseArgs({
  options: {
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'groups-claim': { type: 'string', default: 'groups' },
    'ttl-id-token': { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    'login-page': { type: 'boolean', default: false },
  },
  strict: true,
});
if (!args['client-id']) {
  console.error('idp.mjs: --client-id is required');
  process.exit(2);
}
const clientId = args['client-id'];
const clientSecret = args['client-secret'];
const groupsClaim = args['groups-claim'];
const ttlIdToken = args['ttl-id-token'] === undefined ? 3600 : Number(args['ttl-id-token']);
if (!Number.isInteger(ttlIdToken) || ttlIdToken <= 0) {
  console.error('idp.mjs: --ttl-id-token must be a positive integer');
  process.exit(2);
}

// The clock: every flow after a /_test/next with clock_offset_s sees a shifted Date.now, so that
// iat, exp and auth_time of its ID token lie that far off (and a negative offset of more than the
// ID token's ttl yields a token that has already expired).
const realNow = Date.now.bind(Date);
let clockOffsetMs = 0;
Date.now = () => realNow() + clockOffsetMs;

// Signing keys, new at every start: RS256 (the client's ID token alg) and ES256.
const random = () => randomBytes(6).toString('hex');
function jwkPair(type, options, kid, alg) {
  const { privateKey, publicKey } = generateKeyPairSync(type, options);
  const meta = { kid, alg, use: 'sig' };
  return {
    private: { ...privateKey.export({ format: 'jwk' }), ...meta },
    public: { ...publicKey.export({ format: 'jwk' }), ...meta },
  };
}
const keys = [
  jwkPair('rsa', { modulusLength: 2048 }, `rsa-${random()}`, 'RS256'),
  jwkPair('ec', { namedCurve: 'P-256' }, `ec-${random()}`, 'ES256'),
];
const publicJwks = JSON.stringify({ keys: keys.map((k) => k.public) });

// The people: whoever /_test/next named last signs in next; everyone named so far stays findable.
const ACR_PWD = 'urn:sallyport:test:acr:pwd';
const ACR_MFA = 'urn:sallyport:test:acr:mfa';
const people = new Map();
let nextPerson;
function setNext(body) {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new Error('the body must be a JSON object');
  }
  const sub = body.sub ?? 'tech';
  if (typeof sub !== 'string' || sub === '') throw new Error('sub must be a non-empty string');
  const groups = body.groups ?? [];
  if (!Array.isArray(groups) || groups.some((g) => typeof g !== 'string')) {
    throw new Error('groups must be an array of strings');
  }
  const amr = body.amr ?? ['pwd'];
  if (!Array.isArray(amr) || amr.some((m) => typeof m !== 'string')) {
    throw new Error('amr must be an array of strings');
  }
  const offset = body.clock_offset_s ?? 0;
  if (!Number.isFinite(offset)) throw new Error('clock_offset_s must be a number');
  const person = {
    sub,
    name: body.name ?? sub,
    preferred_username: body.preferred_username ?? sub,
    email: body.email ?? `${sub}@example.test`,
    groups,
    amr,
    acr: body.acr ?? (amr.length > 1 || amr.includes('mfa') ? ACR_MFA : ACR_PWD),
  };
  people.set(sub, person);
  nextPerson = person;
  clockOffsetMs = Math.round(offset * 1000);
}
setNext({});

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
if (!['127.0.0.1', 'localhost'].includes(args.host)) {
  console.error('idp.mjs: --host is 127.0.0.1 or localhost');
  process.exit(2);
}
const issuer = `http://${args.host}:${server.address().port}`;

const registeredRedirects = ['https://127.0.0.1/oidc/callback', 'https://localhost/oidc/callback'];
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      ...(clientSecret === undefined
        ? { token_endpoint_auth_method: 'none' }
        : { client_secret: clientSecret, token_endpoint_auth_method: 'client_secret_basic' }),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: registeredRedirects,
      id_token_signed_response_alg: 'RS256',
      require_auth_time: true,
    },
  ],
  jwks: { keys: keys.map((k) => k.private) },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  acrValues: [ACR_PWD, ACR_MFA],
  claims: {
    openid: ['sub', 'auth_time', 'acr', 'amr'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: [groupsClaim],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  pkce: { methods: ['S256'], required: () => true },
  features: { devInteractions: { enabled: false } },
  ttl: {
    IdToken: ttlIdToken,
    AccessToken: 600,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 600,
    Grant: 600,
  },
  async findAccount(ctx, sub) {
    const person = people.get(sub);
    if (!person) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: person.name,
          preferred_username: person.preferred_username,
          email: person.email,
          [groupsClaim]: person.groups,
        };
      },
    };
  },
});

// The broker under test listens on a random port: any https loopback /oidc/callback is allowed
// (the documented recipe for redirect URIs that a static list cannot hold).
const { redirectUriAllowed } = provider.Client.prototype;
provider.Client.prototype.redirectUriAllowed = function allowLoopback(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  if (
    this.clientId === clientId
    && url.protocol === 'https:'
    && (url.hostname === '127.0.0.1' || url.hostname === 'localhost')
    && url.pathname === '/oidc/callback'
    && url.search === ''
    && url.hash === ''
    && url.username === ''
    && url.password === ''
  ) {
    return true;
  }
  return redirectUriAllowed.call(this, value);
};

let lastIdToken = null;
provider.on('grant.success', (ctx) => {
  if (ctx.body?.id_token) lastIdToken = ctx.body.id_token;
});
for (const event of ['server_error', 'grant.error', 'authorization.error', 'backchannel.error']) {
  provider.on(event, (ctx, error) => {
    console.error(`idp: ${event}: ${error?.name}: ${error?.message} ${error?.error_description ?? ''}`);
  });
}

// The interaction: no page, the next person is signed in at once, and consents to all asked.
async function interact(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const person = nextPerson;
    const grant = new provider.Grant({ accountId: person.sub, clientId: params.client_id });
    grant.addOIDCScope(String(params.scope ?? 'openid'));
    if (typeof params.claims === 'string') {
      const claims = JSON.parse(params.claims);
      grant.addOIDCClaims([
        ...Object.keys(claims.id_token ?? {}),
        ...Object.keys(claims.userinfo ?? {}),
      ]);
    }
    const grantId = await grant.save();
    console.error(`idp: signing in ${person.sub} (amr ${person.amr.join(',')})`);
    await provider.interactionFinished(
      req,
      res,
      {
        login: {
          accountId: person.sub,
          amr: person.amr,
          acr: person.acr,
          ts: Math.floor(Date.now() / 1000),
          remember: false,
        },
        consent: { grantId },
      },
      { mergeWithLastSubmission: false },
    );
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  throw new Error(`unexpected prompt ${prompt.name}`);
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function control(req, res, path) {
  if (req.method === 'POST' && path === '/_test/next') {
    try {
      setNext(JSON.parse(await readBody(req)));
    } catch (error) {
      send(res, 400, { error: String(error.message ?? error) });
      return;
    }
    send(res, 200, { ok: true, sub: nextPerson.sub, clock_offset_s: clockOffsetMs / 1000 });
    return;
  }
  if (req.method === 'GET' && path === '/_test/jwks') {
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(publicJwks),
    });
    res.end(publicJwks);
    return;
  }
  if (req.method === 'GET' && path === '/_test/last-id-token') {
    send(res, 200, { id_token: lastIdToken });
    return;
  }
  if (req.method === 'POST' && path === '/_test/stop') {
    send(res, 200, { ok: true });
    server.close();
    setTimeout(() => process.exit(0), 50).unref();
    return;
  }
  send(res, 404, { error: `no ${req.method} ${path}` });
}

const callback = provider.callback();
server.on('request', (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  let handled;
  if (path.startsWith('/_test/')) {
    handled = control(req, res, path);
  } else if (req.method === 'GET' && args['login-page'] && /^\/interaction\/[^/]+$/.test(path)) {
    const page = '<!doctype html><html lang="en"><title>Sign in</title><link rel="icon" href="data:,"><main><h1>Test IdP</h1>'
      + `<form method="post" action="${path}"><button id="idp-continue">Sign in</button></form></main></html>`;
    res.writeHead(200, { 'content-type': 'text/html', 'content-length': Buffer.byteLength(page) });
    res.end(page);
    handled = Promise.resolve();
  } else if ((req.method === 'GET' || (req.method === 'POST' && args['login-page']))
    && /^\/interaction\/[^/]+$/.test(path)) {
    handled = interact(req, res);
  } else {
    callback(req, res);
    return;
  }
  handled.catch((error) => {
    console.error(`idp: ${req.method} ${path}: ${error?.stack ?? error}`);
    if (!res.headersSent) send(res, 500, { error: String(error?.message ?? error) });
    else res.end();
  });
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
console.error(`idp: ${issuer} ready, client ${clientId}`);
