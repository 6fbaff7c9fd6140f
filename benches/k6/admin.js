// k6 load script for the gateway's admin API (/api/v1 on the admin
// listener): a key lifecycle scenario and a read scenario at modest
// constant arrival rates, with checks on statuses and response shapes.
// See README.md in this directory.
//
//   ADMIN_KEY=gw_live_... k6 run benches/k6/admin.js
//
// Every key the script creates is revoked by the same iteration, and
// teardown revokes any this run left active (an iteration cut short), so
// runs do not pile up active keys. Revoked keys stay in the table (a soft
// delete, kept for the audit log).
//
// Environment (all optional except ADMIN_KEY):
//   ADMIN_KEY        a key with `admin` (or `read:keys,write:keys` plus
//                    read:demo and write:demo, the scopes it hands out)
//   ADMIN_URL        admin listener, default http://127.0.0.1:9090
//   LIFECYCLE_RATE   key lifecycles per second, default 2 (about 9 requests each)
//   READ_RATE        read iterations per second, default 20 (2 requests each)
//   DURATION         default 30s
//   PRE_VUS          pre-allocated VUs per scenario, default 10
//   MAX_VUS          VU ceiling per scenario, default 50
//   P95_MS           threshold on p(95) of every request and of each
//                    operation, default 100
//   PAGE_SIZE        limit of the list calls, default 20

import http from 'k6/http';
import exec from 'k6/execution';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';
import { int } from './env.js';

const ADMIN_KEY = (__ENV.ADMIN_KEY || '').trim();
if (!ADMIN_KEY) {
  throw new Error('ADMIN_KEY is empty: pass an admin-scoped API key (see benches/k6/README.md)');
}
const ADMIN_URL = (__ENV.ADMIN_URL || 'http://127.0.0.1:9090').replace(/\/+$/, '');
const API = `${ADMIN_URL}/api/v1`;
const LIFECYCLE_RATE = int('LIFECYCLE_RATE', 2);
const READ_RATE = int('READ_RATE', 20);
const DURATION = __ENV.DURATION || '30s';
const PRE_VUS = int('PRE_VUS', 10);
const MAX_VUS = Math.max(int('MAX_VUS', 50), PRE_VUS);
const P95_MS = int('P95_MS', 100);
const PAGE_SIZE = Math.min(int('PAGE_SIZE', 20), 100);

const OPS = ['create', 'get', 'list', 'update', 'set_limits', 'rotate', 'revoke', 'audit', 'health', 'rl_status'];

// Keys created and revoked by this run (revoked should equal created at the
// end; teardown_revoked counts leftovers teardown had to revoke).
const keysCreated = new Counter('admin_keys_created');
const keysRevoked = new Counter('admin_keys_revoked');
const teardownRevoked = new Counter('admin_teardown_revoked');

// 201 for create, 200 for everything else; anything else is a failure.
http.setResponseCallback(http.expectedStatuses(200, 201));

const thresholds = {
  http_req_failed: ['rate<0.01'],
  checks: ['rate>0.99'],
  http_req_duration: [`p(95)<${P95_MS}`],
  // An iteration k6 could not start on time (all MAX_VUS busy: the API
  // stalled, or the machine is saturated) means the offered rate was not met.
  dropped_iterations: ['count<1'],
};
// One threshold per operation, mostly so the summary shows each one's p(95).
for (const op of OPS) thresholds[`http_req_duration{op:${op}}`] = [`p(95)<${P95_MS}`];

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    lifecycle: {
      executor: 'constant-arrival-rate',
      exec: 'lifecycle',
      rate: LIFECYCLE_RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: PRE_VUS,
      maxVUs: MAX_VUS,
    },
    reads: {
      executor: 'constant-arrival-rate',
      exec: 'reads',
      rate: READ_RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: PRE_VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds,
};

const AUTH = { Authorization: `Bearer ${ADMIN_KEY}` };
const JSON_AUTH = { ...AUTH, 'Content-Type': 'application/json' };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function params(op, withBody) {
  return { headers: withBody ? JSON_AUTH : AUTH, tags: { op, name: op } };
}

function body(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

// The shape every key object has (Key in admin/openapi.yaml), secret-free.
function isKey(k) {
  return (
    k !== null &&
    typeof k === 'object' &&
    UUID.test(k.id) &&
    typeof k.name === 'string' &&
    typeof k.prefix === 'string' &&
    k.prefix.length === 12 &&
    Array.isArray(k.scopes) &&
    k.rate_limits !== null &&
    typeof k.rate_limits === 'object' &&
    ['active', 'expired', 'revoked'].includes(k.status) &&
    typeof k.created_at === 'string'
  );
}

const hasNoSecret = (k) => !('key' in k) && !('hash' in k) && !('key_hash' in k);

// Once per run: check the admin key, and pick a run id that names this run's
// keys (the default function of every VU gets it through `data`).
export function setup() {
  const res = http.get(`${API}/keys?limit=1`, params('setup'));
  if (res.status !== 200) {
    fail(`ADMIN_KEY cannot list keys at ${API}/keys: ${res.status} ${res.body || res.error}`);
  }
  const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  console.log(`run id ${run}: keys are named k6-admin-${run}-*`);
  return { run };
}

export function lifecycle(data) {
  const name = `k6-admin-${data.run}-${exec.vu.idInTest}-${exec.scenario.iterationInTest}`;

  // Create: 201, the secret in `key` this once.
  let res = http.post(
    `${API}/keys`,
    JSON.stringify({
      name,
      description: 'k6 admin bench; revoked by the same run',
      scopes: ['read:demo'],
      rate_limits: { per_minute: 100 },
      metadata: { bench: 'k6', run: data.run },
    }),
    params('create', true),
  );
  const created = body(res);
  const createdOk = check(res, {
    'create: 201': (r) => r.status === 201,
    'create: a key object with its secret in `key`': () =>
      isKey(created) && typeof created.key === 'string' && created.key.startsWith(created.prefix),
    'create: fields as sent': () =>
      created !== null &&
      created.name === name &&
      created.status === 'active' &&
      created.rate_limits.per_minute === 100 &&
      created.rate_limits.per_hour === null &&
      created.metadata.run === data.run,
  });
  if (!createdOk || !created || !UUID.test(created.id)) return;
  keysCreated.add(1);
  const id = created.id;
  let secret = created.key;

  try {
    // Get: the same key, no secret.
    res = http.get(`${API}/keys/${id}`, params('get'));
    const got = body(res);
    check(res, {
      'get: 200': (r) => r.status === 200,
      'get: the key, without its secret': (r) =>
        isKey(got) && got.id === id && hasNoSecret(got) && !r.body.includes(secret),
    });

    // List, two pages: newest first, at most PAGE_SIZE, never a secret.
    res = http.get(`${API}/keys?limit=${PAGE_SIZE}`, params('list'));
    const page = body(res);
    check(res, {
      'list: 200': (r) => r.status === 200,
      'list: a page of keys without secrets': (r) =>
        page !== null &&
        Array.isArray(page.data) &&
        page.data.length <= PAGE_SIZE &&
        page.data.every((k) => isKey(k) && hasNoSecret(k)) &&
        (page.next_cursor === null || typeof page.next_cursor === 'string') &&
        !r.body.includes(secret),
    });
    if (page && typeof page.next_cursor === 'string') {
      res = http.get(`${API}/keys?limit=${PAGE_SIZE}&cursor=${encodeURIComponent(page.next_cursor)}`, params('list'));
      const next = body(res);
      check(res, {
        'list: next page 200': (r) => r.status === 200,
        'list: next page without secrets, not repeating the first': () =>
          next !== null &&
          Array.isArray(next.data) &&
          next.data.every((k) => isKey(k) && hasNoSecret(k)) &&
          !next.data.some((k) => page.data.some((p) => p.id === k.id)),
      });
    }

    // Update scopes and description (PATCH).
    res = http.patch(
      `${API}/keys/${id}`,
      JSON.stringify({ scopes: ['read:demo', 'write:demo'], description: 'k6 admin bench; updated' }),
      params('update', true),
    );
    const updated = body(res);
    check(res, {
      'update: 200': (r) => r.status === 200,
      'update: scopes replaced, limits kept': () =>
        isKey(updated) &&
        hasNoSecret(updated) &&
        updated.scopes.length === 2 &&
        updated.scopes.includes('write:demo') &&
        updated.rate_limits.per_minute === 100,
    });

    // Rate-limit overrides (PUT /rate-limits/keys/{id}).
    res = http.put(`${API}/rate-limits/keys/${id}`, JSON.stringify({ per_minute: 300 }), params('set_limits', true));
    const limits = body(res);
    check(res, {
      'set_limits: 200': (r) => r.status === 200,
      'set_limits: overrides and effective limits': () =>
        limits !== null &&
        limits.key_id === id &&
        limits.overrides.per_minute === 300 &&
        limits.overrides.per_hour === null &&
        limits.effective.per_minute === 300 &&
        limits.effective.per_hour >= 1,
    });

    // Rotate with no grace: a new secret, shown this once.
    res = http.post(`${API}/keys/${id}/rotate`, JSON.stringify({ grace_period_seconds: 0 }), params('rotate', true));
    const rotated = body(res);
    check(res, {
      'rotate: 200': (r) => r.status === 200,
      'rotate: a new secret and a rotation record': () =>
        isKey(rotated) &&
        rotated.id === id &&
        typeof rotated.key === 'string' &&
        rotated.key !== secret &&
        rotated.key.startsWith(rotated.prefix) &&
        rotated.rotation !== null &&
        rotated.rotation.previous_prefix === created.prefix,
    });
    if (rotated && typeof rotated.key === 'string') secret = rotated.key;
  } finally {
    // Revoke, whatever happened above.
    res = http.del(`${API}/keys/${id}`, null, params('revoke'));
    const revoked = body(res);
    const revokedOk = check(res, {
      'revoke: 200': (r) => r.status === 200,
      'revoke: status revoked, no secret': (r) =>
        isKey(revoked) &&
        revoked.id === id &&
        revoked.status === 'revoked' &&
        typeof revoked.revoked_at === 'string' &&
        hasNoSecret(revoked) &&
        !r.body.includes(secret),
    });
    if (revokedOk) keysRevoked.add(1);
  }

  // The audit log has the key's history, newest first.
  res = http.get(`${API}/audit-logs?target_id=${id}&limit=10`, params('audit'));
  const audit = body(res);
  check(res, {
    'audit: 200': (r) => r.status === 200,
    'audit: created, updated x2, rotated, revoked, no secret': (r) => {
      if (audit === null || !Array.isArray(audit.data)) return false;
      const actions = audit.data.map((e) => e.action).reverse().join(',');
      return (
        actions === 'api_key.created,api_key.updated,api_key.updated,api_key.rotated,api_key.revoked' &&
        audit.data.every((e) => /^[0-9a-f]{64}$/.test(e.hash) && e.target.id === id) &&
        !r.body.includes(secret)
      );
    },
  });
}

export function reads() {
  let res = http.get(`${ADMIN_URL}/health`, { tags: { op: 'health', name: 'health' } });
  const health = body(res);
  check(res, {
    'health: 200': (r) => r.status === 200,
    'health: status ok, database up, snapshot up': () =>
      health !== null &&
      health.status === 'ok' &&
      health.checks.database.status === 'up' &&
      health.checks.key_snapshot.status === 'up',
  });

  res = http.get(`${API}/rate-limits/status`, params('rl_status'));
  const st = body(res);
  check(res, {
    'rl_status: 200': (r) => r.status === 200,
    'rl_status: tiers with 0 <= remaining <= limit': () =>
      st !== null &&
      UUID.test(st.key_id) &&
      ['local', 'redis'].includes(st.backend) &&
      Array.isArray(st.tiers) &&
      Array.isArray(st.routes) &&
      st.tiers.every(
        (t) =>
          typeof t.name === 'string' &&
          t.limit >= 1 &&
          t.remaining >= 0 &&
          t.remaining <= t.limit &&
          [60, 3600, 86400].includes(t.window_seconds) &&
          t.reset_after_seconds >= 1,
      ),
  });
}

// Revoke whatever this run left active (an iteration interrupted at the
// end of the run, say); normally nothing.
export function teardown(data) {
  let cursor = null;
  const leftovers = [];
  for (let pages = 0; pages < 100; pages++) {
    const q = `q=${encodeURIComponent(`k6-admin-${data.run}-`)}&status=active&limit=100`;
    const res = http.get(`${API}/keys?${q}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, params('teardown'));
    const page = body(res);
    if (res.status !== 200 || page === null) {
      console.error(`teardown: listing this run's keys failed: ${res.status}; revoke k6-admin-${data.run}-* by hand`);
      return;
    }
    page.data.forEach((k) => leftovers.push(k.id));
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  for (const id of leftovers) {
    const res = http.del(`${API}/keys/${id}`, null, params('teardown'));
    if (res.status === 200) teardownRevoked.add(1);
    else console.error(`teardown: revoking ${id} failed: ${res.status}`);
  }
  teardownRevoked.add(0);
  console.log(`teardown: ${leftovers.length} key(s) of run ${data.run} were still active and are now revoked`);
}
