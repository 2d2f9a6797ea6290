// OAuth 2.0 token endpoint for tokend's tests and demo, built on oidc-provider.
//
//   node server.mjs --port 0 [--ttl 60] [--state-file FILE] [--exit-with-stdin] [--verbose]
//
// Listens on 127.0.0.1 and prints one JSON line, {"issuer": ..., "port": ...}, once
// ready. Clients are created at runtime through a test-only admin API on the same
// port (plain JSON, no auth, loopback only):
//
//   PUT    /admin/clients/{id}  {"client_secret", "scope", "token_endpoint_auth_method"}
//   DELETE /admin/clients/{id}
//   GET    /admin/stats         {"token_requests": {id: n}, "auth_methods": {id: {m: n}},
//                                "total": n}
//   POST   /admin/stats/reset
//   PUT    /admin/ttl           {"ttl": seconds}
//   PUT    /admin/fail          {"status": 503, "count": n, "error"?, "retry_after"?}
//
// A resource indicator that is an http(s) URL yields an RS256 JWT access token with
// aud = resource; without one the token is opaque (and introspectable). With
// --state-file, clients and the TTL survive a restart; stats and keys do not.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    ttl: { type: 'string', default: '60' },
    'state-file': { type: 'string' },
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

const AUTH_METHODS = new Set(['client_secret_basic', 'client_secret_post']);
const TOKEN_PATH = '/token';

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
  return { total: 0, tokenRequests: new Map(), authMethods: new Map() };
}

function countTokenRequest(clientId, authMethod) {
  stats.total += 1;
  if (clientId === undefined) return;
  stats.tokenRequests.set(clientId, (stats.tokenRequests.get(clientId) ?? 0) + 1);
  const methods = stats.authMethods.get(clientId) ?? {};
  methods[authMethod] = (methods[authMethod] ?? 0) + 1;
  stats.authMethods.set(clientId, methods);
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
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
}

// Client.find caches Client instances by a hash of the stored metadata, so a
// replaced secret yields a new hash and takes effect on the next request.
const clientAdapter = {
  async find(id) {
    const saved = state.clients.get(id);
    return saved && clientMetadata(id, saved);
  },
  async upsert() {},
  async destroy() {},
};

// Everything but clients: short-lived tokens kept until they expire.
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

function newProvider(issuer) {
  return new Provider(issuer, {
    adapter: (model) => (model === 'Client' ? clientAdapter : new ExpiringAdapter(model)),
    jwks: { keys: [newSigningKey()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
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

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function presentedAuth(headers, bodyClientId) {
  if (headers.authorization !== undefined) {
    return { clientId: decodeBasicClientId(headers.authorization), method: 'client_secret_basic' };
  }
  return { clientId: bodyClientId, method: 'client_secret_post' };
}

async function rejectInjectedFailure(ctx) {
  failure.count -= 1;
  const form = new URLSearchParams(await readBody(ctx.req));
  const { clientId, method } = presentedAuth(ctx.headers, form.get('client_id') ?? undefined);
  countTokenRequest(clientId, method);
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
  const { clientId, method } = presentedAuth(ctx.headers, ctx.oidc?.params?.client_id);
  countTokenRequest(client?.clientId ?? clientId, method);
  if (ctx.status === 200 && client && client.clientAuthMethod !== method) {
    ctx.status = 401;
    ctx.body = {
      error: 'invalid_client',
      error_description: `client authentication failed (registered for ${client.clientAuthMethod})`,
    };
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
    client_secret: body.client_secret,
    scope: body.scope ?? '',
    token_endpoint_auth_method: body.token_endpoint_auth_method ?? 'client_secret_basic',
  };
  if (!AUTH_METHODS.has(saved.token_endpoint_auth_method)) {
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
    total: stats.total,
  };
}

async function routeAdmin(provider, req, path) {
  const clientMatch = /^\/admin\/clients\/([^/]+)$/.exec(path);
  const route = `${req.method} ${clientMatch ? '/admin/clients/{id}' : path}`;
  switch (route) {
    case 'PUT /admin/clients/{id}':
      return putClient(provider, decodeURIComponent(clientMatch[1]), await readJson(req));
    case 'DELETE /admin/clients/{id}': {
      const deleted = state.clients.delete(decodeURIComponent(clientMatch[1]));
      saveState();
      return { deleted };
    }
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

const server = createServer();
server.listen(positiveIntOrZero(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = newProvider(issuer);
  provider.use(tokenEndpoint);
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  const callback = provider.callback();
  server.on('request', (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path === '/admin' || path.startsWith('/admin/')) {
      handleAdmin(provider, req, res, path);
    } else {
      callback(req, res);
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

function positiveIntOrZero(value) {
  return value === '0' ? 0 : positiveInt(value, '--port');
}

function shutDown() {
  server.closeAllConnections();
  server.close();
  process.exit(0);
}

process.on('SIGTERM', shutDown);
process.on('SIGINT', shutDown);
if (args['exit-with-stdin']) {
  // The parent holds our stdin open; when it goes away, so do we.
  process.stdin.on('end', shutDown).resume();
}
