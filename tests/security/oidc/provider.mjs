// A real OpenID provider for the single sign-on tests: panva's oidc-provider (certified), with its
// development login form (any password) and a fixed table of people and their groups.
//
// Fault injection for the refused-sign-in tests: POST /__test/fault {"fault": NAME} makes the next ID
// token the token endpoint issues wrong in one way, re-signed so that only that one thing is wrong:
//   bad_signature  signed by a second key set (same kid, other key): the signature does not verify
//   wrong_audience signed by the provider's own key, aud another client
//   expired        signed by the provider's own key, exp an hour ago
//   wrong_nonce    signed by the provider's own key, nonce not the one the client sent
//   groups_at_userinfo  not a fault: the groups claim left out of the ID token (still at userinfo), as
//                  providers that follow OpenID Connect Core 5.4 to the letter do
// The fault applies to one token and is then cleared.
//
// Sign-out (OpenID Connect RP-Initiated Logout 1.0): the end_session_endpoint is on, with the client's
// POST_LOGOUT_REDIRECT_URI registered; RP_LOGOUT=off turns the feature off, so the discovery document
// names no end_session_endpoint (a provider without it).
//
// Env: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI, RP_LOGOUT. Prints
// "ready <issuer>" once listening.
import http from 'node:http';

import { SignJWT, decodeJwt, exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const issuer = `http://127.0.0.1:${port}`;

const PEOPLE = {
  alice: { name: 'Alice Reviewer', email: 'alice@example.test', groups: ['reviewers-a'] },
  bob: { name: 'Bob Stranger', email: 'bob@example.test', groups: ['marketing'] },
  carol: { name: 'Carol Curator', email: 'carol@example.test', groups: ['curators-a', 'reviewers-b'] },
  dave: { name: 'Dave Second', email: 'dave@example.test', groups: ['reviewers-a'] },
};

async function signingKey(kid) {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  return { privateKey, jwk: { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' } };
}

const real = await signingKey('test-key-1');
const forged = await signingKey('test-key-1');  // same kid: the client looks up the real key and fails

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    post_logout_redirect_uris: process.env.POST_LOGOUT_REDIRECT_URI ? [process.env.POST_LOGOUT_REDIRECT_URI] : [],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [real.jwk] },
  cookies: { keys: ['pedigree-test-provider-cookie-key'] },
  claims: { openid: ['sub'], profile: ['name'], email: ['email'], groups: ['groups'] },
  // The groups claim in the ID token itself (not only at userinfo): that is where Pedigree reads it.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    // The provider's own confirmation page stays ("Yes, sign me out"): a real provider asks too.
    rpInitiatedLogout: { enabled: process.env.RP_LOGOUT !== 'off' },
  },
  async findAccount(ctx, id) {
    const person = PEOPLE[id];
    if (!person) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...person }; } };
  },
  async loadExistingGrant(ctx) {
    // Consent is implied for the test client (the dev consent screen adds nothing to these tests).
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});

let fault = null;

provider.use(async (ctx, next) => {
  await next();
  if (fault && ctx.path === '/token' && ctx.method === 'POST' && ctx.body && ctx.body.id_token) {
    const claims = decodeJwt(ctx.body.id_token);
    let key = real.privateKey;
    const now = Math.floor(Date.now() / 1000);
    if (fault === 'bad_signature') key = forged.privateKey;
    else if (fault === 'wrong_audience') claims.aud = 'some-other-client';
    else if (fault === 'expired') { claims.iat = now - 7200; claims.exp = now - 3600; }
    else if (fault === 'wrong_nonce') claims.nonce = 'not-the-nonce-you-sent';
    else if (fault === 'groups_at_userinfo') delete claims.groups;
    ctx.body = { ...ctx.body, id_token: await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'test-key-1', typ: 'JWT' }).sign(key) };
    fault = null;
  }
});

const handler = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url === '/__test/fault' && req.method === 'POST') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      fault = JSON.parse(body || '{}').fault || null;
      res.writeHead(204).end();
    });
    return;
  }
  handler(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
