// OAuth 2.0 token endpoint for tokend's tests and demo, built on oidc-provider.
//
//   node server.mjs --port 0 [--ttl 60] [--state-file FILE] [--exit-with-stdin] [--verbose]
//                   [--tls-cert FILE --tls-key FILE [--client-ca FILE --mtls-port 0]]
//
// Listens on 127.0.0.1 and prints one JSON line, {"issuer", "port", "mtls_port"?}, once
// ready. Clients are created at runtime through a test-only admin API on the same
// port (plain JSON, no auth, loopback only):
//
//   PUT    /admin/clients/{id}  {"client_secret"?, "scope", "token_endpoint_auth_method",
//                                "jwks"?, "tls_client_auth_subject_dn"?}
//   DELETE /admin/clients/{id}
//   GET    /admin/stats         {"token_requests": {id: n}, "auth_methods": {id: {m: n}},
//                                "certificates": {id: [serial, ...]}, "total": n}
//   GET    /admin/assertions/{id}  [client_assertion JWT, ...] received, oldest first
//   POST   /admin/stats/reset   (assertions and certificate serials too)
//   PUT    /admin/ttl           {"ttl": seconds}
//   PUT    /admin/fail          {"status": 503, "count": n, "error"?, "retry_after"?}
//
// Client authentication: client_secret_basic, client_secret_post, private_key_jwt
// (inline public `jwks`; RS/PS 256/384/512, ES256, ES384 and EdDSA assertions) and
// tls_client_auth (`tls_client_auth_subject_dn`, an RFC 4514 DN such as
// "CN=orders-client"). The token endpoint accepts only the registered method; the
// stats count each request under the method it presented ("none" when it carried
// no credentials at all), and stderr says why each refused one was refused:
// "token request refused: invalid_client: jwt expired".
// Assertions: each jti once (oidc-provider's ReplayDetection, kept in memory until
// the assertion expires); clock tolerance CLOCK_TOLERANCE = 5 s for exp, nbf and iat,
// and an iat further in the future than that is refused too (oidc-provider alone
// would accept it as long as exp is later).
//
// TLS: --tls-cert/--tls-key make the listener HTTPS. --client-ca with --mtls-port
// adds a second HTTPS listener that asks for a client certificate (RFC 8705 §5
// endpoint aliases; discovery then carries mtls_endpoint_aliases.token_endpoint).
// It does not reject a missing, expired or untrusted certificate during the
// handshake: the token endpoint answers invalid_client for those instead.
//
// A resource indicator that is an http(s) URL yields an RS256 JWT access token with
// aud = resource; without one the token is opaque (and introspectable). With
// --state-file, clients and the TTL survive a restart; stats and keys do not.

import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    ttl: { type: 'string', default: '60' },
    'state-file': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'client-ca': { type: 'string' },
    'mtls-port': { type: 'string' },
    'exit-with-stdin': { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
  },
});

// oidc-provider prints its development notices with console.info (stdout), which
// would get in the way of the ready line; keep stdout for that line alone.
const toStderr = (...parts) => process.stderr.write(`${parts.join(' ')}\n`);
const quiet = () => {};
console.log = args.verbose ? toStderr : quiet;
console.info = args.verbose ? toStderr : quiet;
console.warn = args.verbose ? toStderr : quiet;

const { default: Provider, errors } = await import('oidc-provider');

const AUTH_METHODS = ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth'];
const CLIENT_AUTH_SIGNING_ALGS = [
  'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA',
];
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
// Seconds of clock skew allowed on client assertions' exp, nbf and iat.
const CLOCK_TOLERANCE = 5;
const TOKEN_PATH = '/token';

const tls = loadTlsOptions(args);
const state = loadState(args['state-file'], positiveInt(args.ttl, '--ttl'));
const stats = newStats();
let failure = { count: 0 };

function positiveInt(value, name) {
  const number = Number(value);
  if (!Number.isInteger(number) || number <= 0) {
    throw new Error(`${name} must be a positive integer, got ${value}`);
  }
  return number;
}

function portNumber(value, name) {
  return value === '0' ? 0 : positiveInt(value, name);
}

// The certificate and key of both listeners, and the CAs client certificates
// must chain to; undefined without --tls-cert.
function loadTlsOptions(options) {
  const { 'tls-cert': cert, 'tls-key': key, 'client-ca': clientCa, 'mtls-port': mtlsPort } = options;
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error('--tls-cert and --tls-key go together');
  }
  if ((clientCa === undefined) !== (mtlsPort === undefined)) {
    throw new Error('--client-ca and --mtls-port go together');
  }
  if (clientCa !== undefined && cert === undefined) {
    throw new Error('--mtls-port needs --tls-cert and --tls-key for its own listener');
  }
  if (cert === undefined) return undefined;
  return {
    cert: readFileSync(cert),
    key: readFileSync(key),
    clientCa: clientCa === undefined ? undefined : readFileSync(clientCa),
    mtlsPort: mtlsPort === undefined ? undefined : portNumber(mtlsPort, '--mtls-port'),
  };
}

function loadState(file, ttl) {
  if (file && existsSync(file)) {
    const saved = JSON.parse(readFileSync(file, 'utf8'));
    return { ttl: saved.ttl ?? ttl, clients: new Map(Object.entries(saved.clients)) };
  }
  return { ttl, clients: new Map() };
}

function saveState() {
  const file = args['state-file'];
  if (!file) return;
  const saved = { ttl: state.ttl, clients: Object.fromEntries(state.clients) };
  writeFileSync(`${file}.tmp`, JSON.stringify(saved, null, 2));
  renameSync(`${file}.tmp`, file);
}

function newStats() {
  return {
    total: 0,
    tokenRequests: new Map(),
    authMethods: new Map(),
    assertions: new Map(),
    certificates: new Map(),
  };
}

function append(map, key, value) {
  const values = map.get(key) ?? [];
  values.push(value);
  map.set(key, values);
}

function countTokenRequest(clientId, authMethod, assertion) {
  stats.total += 1;
  if (clientId === undefined) return;
  stats.tokenRequests.set(clientId, (stats.tokenRequests.get(clientId) ?? 0) + 1);
  const methods = stats.authMethods.get(clientId) ?? {};
  methods[authMethod] = (methods[authMethod] ?? 0) + 1;
  stats.authMethods.set(clientId, methods);
  if (typeof assertion === 'string') append(stats.assertions, clientId, assertion);
}

// Client metadata as oidc-provider sees it. `allowed_scope` is our own property:
// the standard `scope` metadata may only hold scopes the provider declares up
// front, and the tests invent scopes per client.
function clientMetadata(clientId, saved) {
  return {
    client_id: clientId,
    client_secret: saved.client_secret,
    allowed_scope: saved.scope,
    token_endpoint_auth_method: saved.token_endpoint_auth_method,
    jwks: saved.jwks,
    tls_client_auth_subject_dn: saved.tls_client_auth_subject_dn,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
}

// Client.find caches Client instances by a hash of the stored metadata, so a
// replaced secret or key set yields a new hash and takes effect on the next request.
const clientAdapter = {
  async find(id) {
    const saved = state.clients.get(id);
    return saved && clientMetadata(id, saved);
  },
  async upsert() {},
  async destroy() {},
};

// Everything but clients: short-lived tokens, and the ReplayDetection entries that
// remember each client assertion's jti, kept until they expire.
class ExpiringAdapter {
  static entries = new Map();

  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    ExpiringAdapter.sweep();
    ExpiringAdapter.entries.set(this.key(id), { payload, expiresAt });
  }

  async find(id) {
    const entry = ExpiringAdapter.entries.get(this.key(id));
    return entry && entry.expiresAt > Date.now() ? entry.payload : undefined;
  }

  async findByUid() {
    return undefined;
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    ExpiringAdapter.entries.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, { payload }] of ExpiringAdapter.entries) {
      if (payload.grantId === grantId) ExpiringAdapter.entries.delete(key);
    }
  }

  static sweep() {
    const now = Date.now();
    for (const [key, { expiresAt }] of ExpiringAdapter.entries) {
      if (expiresAt <= now) ExpiringAdapter.entries.delete(key);
    }
  }
}

function isHttpUrl(value) {
  const url = URL.parse(value);
  return url !== null && (url.protocol === 'https:' || url.protocol === 'http:');
}

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = randomBytes(8).toString('hex');
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

// The certificate the client presented on this connection; undefined on plain
// HTTP, on the listener that does not ask for one, or when the client sent none.
function peerCertificate(socket) {
  if (typeof socket?.getPeerCertificate !== 'function') return undefined;
  const certificate = socket.getPeerCertificate();
  return certificate?.raw ? certificate : undefined;
}

// The way OpenBao's PKI prints serial numbers: lowercase hex byte pairs joined by ':'.
function formatSerial(hex) {
  const even = hex.length % 2 ? `0${hex}` : hex;
  return even.toLowerCase().match(/../g).join(':');
}

// RFC 4514 string order is the reverse of the certificate's RDN sequence, which
// X509Certificate.subject prints one per line. Attribute types compare
// case-insensitively, values exactly; multi-valued RDNs are not supported.
function splitDn(dn) {
  return dn
    .split(/(?<!\\),/)
    .map((rdn) => rdn.trim())
    .filter(Boolean)
    .map((rdn) => {
      const equals = rdn.indexOf('=');
      return `${rdn.slice(0, equals).trim().toUpperCase()}=${rdn.slice(equals + 1).trim()}`;
    });
}

function certificateSubjectDn(certificate) {
  return new X509Certificate(certificate.raw).subject.split('\n').reverse().join(',');
}

const mTLS = {
  enabled: true,
  tlsClientAuth: true,
  getCertificate(ctx) {
    const certificate = peerCertificate(ctx.socket);
    return certificate && new X509Certificate(certificate.raw).toString();
  },
  // With rejectUnauthorized: false the handshake lets any certificate through;
  // this is where an expired or untrusted one fails, as invalid_client.
  certificateAuthorized(ctx) {
    return ctx.socket.authorized === true;
  },
  certificateSubjectMatches(ctx, property, expected) {
    if (property !== 'tls_client_auth_subject_dn') return false;
    const actual = splitDn(certificateSubjectDn(peerCertificate(ctx.socket)));
    const wanted = splitDn(expected);
    return actual.length === wanted.length && actual.every((rdn, i) => rdn === wanted[i]);
  },
};

// Called after oidc-provider checked signature, aud, exp and nbf, before it
// records the jti; it only rejects an iat in the future when exp is missing.
async function rejectAssertionFromTheFuture(_ctx, claims) {
  if (typeof claims.iat === 'number' && claims.iat > Date.now() / 1000 + CLOCK_TOLERANCE) {
    throw new errors.InvalidClientAuth('client assertion iat is in the future');
  }
}

function newProvider(issuer, mtlsTokenUrl) {
  return new Provider(issuer, {
    adapter: (model) => (model === 'Client' ? clientAdapter : new ExpiringAdapter(model)),
    jwks: { keys: [newSigningKey()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    clientAuthMethods: AUTH_METHODS,
    enabledJWA: { clientAuthSigningAlgValues: CLIENT_AUTH_SIGNING_ALGS },
    clockTolerance: CLOCK_TOLERANCE,
    assertJwtClientAuthClaimsAndHeader: rejectAssertionFromTheFuture,
    discovery: mtlsTokenUrl ? { mtls_endpoint_aliases: { token_endpoint: mtlsTokenUrl } } : {},
    extraClientMetadata: {
      properties: ['allowed_scope'],
      validator(_ctx, key, value) {
        if (typeof value !== 'string') {
          throw new errors.InvalidClientMetadata(`${key} must be a string`);
        }
      },
    },
    ttl: { ClientCredentials: () => state.ttl },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      mTLS,
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        async getResourceServerInfo(_ctx, resource, client) {
          if (!isHttpUrl(resource)) {
            throw new errors.InvalidTarget('resource must be an http(s) URL');
          }
          return {
            scope: client.allowed_scope,
            audience: resource,
            accessTokenTTL: state.ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
}

function decodeBasicClientId(authorization) {
  const [scheme, encoded] = (authorization ?? '').split(' ');
  if (scheme?.toLowerCase() !== 'basic' || !encoded) return undefined;
  const decoded = Buffer.from(encoded, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon === -1) return undefined;
  try {
    // RFC 6749 §2.3.1: the id is form-urlencoded before base64.
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

function assertionSubject(assertion) {
  try {
    const payload = JSON.parse(Buffer.from(assertion.split('.')[1], 'base64url').toString('utf8'));
    return typeof payload.sub === 'string' ? payload.sub : undefined;
  } catch {
    return undefined;
  }
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// Which client and auth method a token request claims, from its headers, its
// form parameters and the connection: the same precedence oidc-provider uses.
// A request with no credentials at all counts as method "none".
function presentedAuth(ctx, params) {
  if (params.client_assertion !== undefined || params.client_assertion_type === JWT_BEARER) {
    const clientId = params.client_id ?? assertionSubject(params.client_assertion ?? '');
    return { clientId, method: 'private_key_jwt' };
  }
  if (ctx.headers.authorization !== undefined) {
    return { clientId: decodeBasicClientId(ctx.headers.authorization), method: 'client_secret_basic' };
  }
  if (params.client_secret !== undefined) {
    return { clientId: params.client_id, method: 'client_secret_post' };
  }
  if (peerCertificate(ctx.socket)) {
    return { clientId: params.client_id, method: 'tls_client_auth' };
  }
  return { clientId: params.client_id, method: 'none' };
}

async function rejectInjectedFailure(ctx) {
  failure.count -= 1;
  const params = Object.fromEntries(new URLSearchParams(await readBody(ctx.req)));
  const { clientId, method } = presentedAuth(ctx, params);
  countTokenRequest(clientId, method, params.client_assertion);
  ctx.status = failure.status;
  if (failure.retry_after !== undefined) ctx.set('Retry-After', String(failure.retry_after));
  ctx.body = { error: failure.error, error_description: 'injected failure' };
}

// Token endpoint middleware: fault injection, request counting, and a check that
// the client used its registered auth method (oidc-provider accepts basic and
// post interchangeably for either registration).
async function tokenEndpoint(ctx, next) {
  if (ctx.path !== TOKEN_PATH || ctx.method !== 'POST') {
    await next();
    return;
  }
  if (failure.count > 0) {
    await rejectInjectedFailure(ctx);
    return;
  }

  await next();

  const client = ctx.oidc?.entities?.Client;
  const params = ctx.oidc?.params ?? {};
  const { clientId, method } = presentedAuth(ctx, params);
  countTokenRequest(client?.clientId ?? clientId, method, params.client_assertion);
  if (ctx.status !== 200 || !client) return;
  if (client.clientAuthMethod !== method) {
    ctx.status = 401;
    ctx.body = {
      error: 'invalid_client',
      error_description: `client authentication failed (registered for ${client.clientAuthMethod})`,
    };
  } else if (method === 'tls_client_auth') {
    append(stats.certificates, client.clientId, formatSerial(peerCertificate(ctx.socket).serialNumber));
  }
}

class AdminError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function readJson(req) {
  try {
    const value = JSON.parse(await readBody(req));
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) return value;
  } catch {
    // reported below
  }
  throw new AdminError(400, 'body must be a JSON object');
}

async function putClient(provider, clientId, body) {
  const saved = {
    client_secret: body.client_secret ?? undefined,
    scope: body.scope ?? '',
    token_endpoint_auth_method: body.token_endpoint_auth_method ?? 'client_secret_basic',
    jwks: body.jwks ?? undefined,
    tls_client_auth_subject_dn: body.tls_client_auth_subject_dn ?? undefined,
  };
  if (!AUTH_METHODS.includes(saved.token_endpoint_auth_method)) {
    throw new AdminError(400, `unsupported token_endpoint_auth_method ${saved.token_endpoint_auth_method}`);
  }
  try {
    await provider.Client.validate(clientMetadata(clientId, saved));
  } catch (err) {
    throw new AdminError(400, err.error_description ?? err.message);
  }
  const created = !state.clients.has(clientId);
  state.clients.set(clientId, saved);
  saveState();
  return { client_id: clientId, created };
}

function statsBody() {
  return {
    token_requests: Object.fromEntries(stats.tokenRequests),
    auth_methods: Object.fromEntries(stats.authMethods),
    certificates: Object.fromEntries(stats.certificates),
    total: stats.total,
  };
}

async function routeAdmin(provider, req, path) {
  const clientMatch = /^\/admin\/(clients|assertions)\/([^/]+)$/.exec(path);
  const route = `${req.method} ${clientMatch ? `/admin/${clientMatch[1]}/{id}` : path}`;
  const clientId = clientMatch && decodeURIComponent(clientMatch[2]);
  switch (route) {
    case 'PUT /admin/clients/{id}':
      return putClient(provider, clientId, await readJson(req));
    case 'DELETE /admin/clients/{id}': {
      const deleted = state.clients.delete(clientId);
      saveState();
      return { deleted };
    }
    case 'GET /admin/assertions/{id}':
      return stats.assertions.get(clientId) ?? [];
    case 'GET /admin/stats':
      return statsBody();
    case 'POST /admin/stats/reset':
      Object.assign(stats, newStats());
      return statsBody();
    case 'PUT /admin/ttl':
      state.ttl = positiveIntOr400((await readJson(req)).ttl, 'ttl');
      saveState();
      return { ttl: state.ttl };
    case 'PUT /admin/fail': {
      const body = await readJson(req);
      const status = positiveIntOr400(body.status, 'status');
      const count = body.count === 0 ? 0 : positiveIntOr400(body.count ?? 1, 'count');
      const error = body.error ?? (status >= 500 ? 'temporarily_unavailable' : 'invalid_request');
      failure = { status, count, error, retry_after: body.retry_after };
      return { status, count, error };
    }
    default:
      throw new AdminError(404, `no admin route ${route}`);
  }
}

function positiveIntOr400(value, name) {
  try {
    return positiveInt(value, name);
  } catch (err) {
    throw new AdminError(400, err.message);
  }
}

async function handleAdmin(provider, req, res, path) {
  let status = 200;
  let body;
  try {
    body = await routeAdmin(provider, req, path);
  } catch (err) {
    status = err instanceof AdminError ? err.status : 500;
    body = { error: err.message };
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server.address().port));
  });
}

// The main listener, HTTPS with --tls-cert; with --mtls-port a second HTTPS one
// that asks for client certificates but lets the token endpoint judge them.
const server = tls ? createHttpsServer({ cert: tls.cert, key: tls.key }) : createServer();
const mtlsServer = tls?.clientCa && createHttpsServer({
  cert: tls.cert,
  key: tls.key,
  ca: tls.clientCa,
  requestCert: true,
  rejectUnauthorized: false,
});
const servers = [server, mtlsServer].filter(Boolean);

const port = await listen(server, portNumber(args.port, '--port'));
const mtlsPort = mtlsServer && await listen(mtlsServer, tls.mtlsPort);
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
const provider = newProvider(issuer, mtlsServer && `https://127.0.0.1:${mtlsPort}${TOKEN_PATH}`);
provider.use(tokenEndpoint);
provider.on('server_error', (_ctx, err) => console.error('server_error', err));
// The client only hears "client authentication failed"; the tests may want to know why.
provider.on('grant.error', (_ctx, err) => {
  process.stderr.write(`token request refused: ${err.message}: ${err.error_detail ?? err.error_description}\n`);
});
const callback = provider.callback();
for (const listener of servers) {
  listener.on('request', (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path === '/admin' || path.startsWith('/admin/')) {
      handleAdmin(provider, req, res, path);
    } else {
      callback(req, res);
    }
  });
}
process.stdout.write(`${JSON.stringify({ issuer, port, mtls_port: mtlsPort })}\n`);

function shutDown() {
  for (const listener of servers) {
    listener.closeAllConnections();
    listener.close();
  }
  process.exit(0);
}

process.on('SIGTERM', shutDown);
process.on('SIGINT', shutDown);
if (args['exit-with-stdin']) {
  // The parent holds our stdin open; when it goes away, so do we.
  process.stdin.on('end', shutDown).resume();
}
