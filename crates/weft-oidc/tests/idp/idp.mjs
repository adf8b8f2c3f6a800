// A real OpenID Connect provider for weft-oidc's tests: panva/oidc-provider (a certified
// implementation), configured with one confidential client and a few test users, and a
// minimal login + consent form. Listens on 127.0.0.1 only.
//
// Environment:
//   IDP_REDIRECT_URI  the client's redirect URI (required), e.g. http://127.0.0.1:8080/oidc/callback
//   IDP_PORT          port to listen on (default 0 = any free port)
//   IDP_CLIENT_ID     default "weft";  IDP_CLIENT_SECRET default "weft-test-secret"
//
// Prints "ISSUER <url>" on stdout once it accepts connections. Exits when stdin closes, so
// it never outlives the test that started it (IDP_WATCH_STDIN=0 turns that off, for a
// supervisor that starts it with stdin closed and kills it itself).

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

// Only the ISSUER line goes to stdout; the provider's own notices go to stderr.
console.log = console.error;
console.info = console.error;

const redirectUri = process.env.IDP_REDIRECT_URI;
if (!redirectUri) {
  console.error('IDP_REDIRECT_URI is required');
  process.exit(2);
}
const clientId = process.env.IDP_CLIENT_ID || 'weft';
const clientSecret = process.env.IDP_CLIENT_SECRET || 'weft-test-secret';

// Test users: login (e-mail) -> account. `sub` is opaque and stable.
const USERS = {
  'alice@example.com': {
    sub: 'u-alice-0001', password: 'alice-password', name: 'Alice Example',
    email_verified: true, groups: ['engineering', 'admins'],
  },
  'carol@example.com': {
    sub: 'u-carol-0003', password: 'carol-password', name: 'Carol Example',
    email_verified: true, groups: ['sales'],
  },
  'mallory@elsewhere.test': {
    sub: 'u-mallory-0002', password: 'mallory-password', name: 'Mallory Elsewhere',
    email_verified: true, groups: ['engineering'],
  },
  'dave@example.com': {
    sub: 'u-dave-0004', password: 'dave-password', name: 'Dave Unverified',
    email_verified: false, groups: [],
  },
};
const BY_SUB = Object.fromEntries(Object.entries(USERS).map(([email, u]) => [u.sub, { email, ...u }]));

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key-1', use: 'sig', alg: 'RS256' };

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.IDP_PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  features: { devInteractions: { enabled: false } },
  ttl: {
    AccessToken: 600, AuthorizationCode: 60, Grant: 3600, IdToken: 600, Interaction: 600, Session: 3600,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const u = BY_SUB[id];
    if (!u) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: u.email,
          email_verified: u.email_verified,
          name: u.name,
          preferred_username: u.email.split('@')[0],
          groups: u.groups,
        };
      },
    };
  },
});

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html><head><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;

function loginForm(uid, message) {
  return page('Sign in to Test IdP', `${message ? `<p class="error">${esc(message)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<label>E-mail <input name="login" type="email" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button>
</form>`);
}

function consentForm(uid, clientName) {
  return page('Authorize', `<p>${esc(clientName)} wants to know who you are.</p>
<form method="post" action="/interaction/${esc(uid)}/confirm">
<button type="submit">Allow</button>
</form>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('body too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  const m = /^\/interaction\/([^/?]+)(\/login|\/confirm)?$/.exec(req.url.split('?')[0]);
  if (!m) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    const [, uid, action] = m;
    if (req.method === 'GET' && !action) {
      if (details.prompt.name === 'login') return send(res, 200, loginForm(uid));
      return send(res, 200, consentForm(uid, clientId));
    }
    if (req.method === 'POST' && action === '/login') {
      const form = await readForm(req);
      const u = USERS[(form.login || '').toLowerCase()];
      if (!u || u.password !== form.password) {
        return send(res, 200, loginForm(uid, 'Invalid e-mail or password.'));
      }
      return provider.interactionFinished(req, res, { login: { accountId: u.sub } }, { mergeWithLastSubmission: false });
    }
    if (req.method === 'POST' && action === '/confirm') {
      await readForm(req);
      const { prompt: { details: missing }, grantId, session, params } = details;
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      const saved = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId: saved } }, { mergeWithLastSubmission: true });
    }
    return send(res, 405, page('Not allowed', ''));
  } catch (err) {
    return send(res, 400, page('Error', `<p>${esc(err.message)}</p>`));
  }
});

if (process.env.IDP_WATCH_STDIN !== '0') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
process.stdout.write(`ISSUER ${issuer}\n`);
