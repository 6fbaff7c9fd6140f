// k6 load script for the gateway's proxy path: authenticated GETs through a
// route at a constant arrival rate, with checks on the status and on the
// rate-limit headers. See README.md in this directory.
//
//   GATEWAY_KEYS=gw_live_a...,gw_live_b... k6 run benches/k6/proxy.js
//
// Environment (all optional except GATEWAY_KEYS):
//   GATEWAY_KEYS   comma-separated API keys holding the route's scope
//                  (read:demo for /demo); one is used per request
//   KEY_PICK       roundrobin (default) or random
//   BASE_URL       proxy listener, default http://127.0.0.1:8080
//   URL_PATH       request path, default /demo/hello (not PATH: k6 passes the
//                  shell's own PATH through to __ENV)
//   RATE           requests per second, default 200
//   DURATION       default 30s
//   PRE_VUS        pre-allocated VUs, default 20
//   MAX_VUS        VU ceiling, default 200
//   P95_MS         threshold on p(95) of http_req_duration of the expected
//                  answers, default 50
//   MAX_429_RATE   allowed fraction of 429 answers, default 0 (none)
//   ALLOW_429      1: a 429 is an expected answer (to load the limiter's
//                  refusal path on purpose); MAX_429_RATE then defaults to 1

import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { int, num } from './env.js';

const KEYS = (__ENV.GATEWAY_KEYS || '')
  .split(',')
  .map((k) => k.trim())
  .filter((k) => k.length > 0);
if (KEYS.length === 0) {
  throw new Error('GATEWAY_KEYS is empty: pass one or more API keys, comma-separated (see benches/k6/README.md)');
}
const KEY_PICK = (__ENV.KEY_PICK || 'roundrobin').toLowerCase();
if (KEY_PICK !== 'roundrobin' && KEY_PICK !== 'random') {
  throw new Error(`KEY_PICK must be roundrobin or random, not ${KEY_PICK}`);
}
const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const URL_PATH = __ENV.URL_PATH || '/demo/hello';
const TARGET = BASE_URL + (URL_PATH.startsWith('/') ? URL_PATH : `/${URL_PATH}`);
const RATE = int('RATE', 200);
const DURATION = __ENV.DURATION || '30s';
const PRE_VUS = int('PRE_VUS', 20);
const MAX_VUS = Math.max(int('MAX_VUS', 200), PRE_VUS);
const P95_MS = num('P95_MS', 50);
const ALLOW_429 = __ENV.ALLOW_429 === '1' || __ENV.ALLOW_429 === 'true';
const MAX_429_RATE = num('MAX_429_RATE', ALLOW_429 ? 1 : 0);

// 429s are counted on their own so a run can tell rate limiting from
// errors. proxy_429 and proxy_errors are plain counts (proxy_429 is tagged
// with the refusing tier); proxy_rate_limited is the fraction of answers
// that were 429 and carries its own threshold.
const proxy429 = new Counter('proxy_429');
const proxyErrors = new Counter('proxy_errors');
const rateLimited = new Rate('proxy_rate_limited');

// Only 200 is an expected answer: a 429 counts in http_req_failed like any
// other refusal (README: "Why a 429 is a failure"), unless ALLOW_429.
const EXPECTED = ALLOW_429 ? [200, 429] : [200];
http.setResponseCallback(http.expectedStatuses(...EXPECTED));

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    proxy: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: PRE_VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds: {
    // Latency of the expected answers (200s; 429s too with ALLOW_429):
    // cheap refusals or errors must not pull the percentile down.
    'http_req_duration{expected_response:true}': [`p(95)<${P95_MS}`],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    proxy_rate_limited: [`rate<=${MAX_429_RATE}`],
    // k6 itself could not start iterations on time (no free VU, or the
    // machine is saturated): the run did not offer RATE, so its figures are
    // not those of RATE. Fails above 1% of the target rate.
    dropped_iterations: [`rate<${RATE * 0.01}`],
  },
};

// A key is shown by its prefix only (the first 12 characters, as the admin
// API does), never in full.
const shown = (k) => `${k.slice(0, 12)}…`;

// Response header by lower-case name (k6 canonicalises names: X-Ratelimit-Limit).
function header(res, name) {
  for (const k in res.headers) {
    if (k.toLowerCase() === name) return res.headers[k];
  }
  return undefined;
}

const UINT = /^\d+$/;
const POLICY = /^"[a-z-]+";q=\d+;w=\d+(, "[a-z-]+";q=\d+;w=\d+)*$/;
const HEADLINE = /^"([a-z-]+)";r=(\d+);t=(\d+)$/;

// DURATION in seconds ("30s", "5m", "1h30m", "90s"); NaN if unreadable.
function seconds(d) {
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  const unit = { h: 3600, m: 60, s: 1, ms: 0.001 };
  let total = 0;
  let matched = '';
  let m;
  while ((m = re.exec(d)) !== null) {
    total += Number(m[1]) * unit[m[2]];
    matched += m[0];
  }
  return matched === d && matched !== '' ? total : NaN;
}

// One probe per key before the load: stop at once on a key the route
// refuses, and warn when a key's limits cannot carry its share of RATE over
// DURATION (the default hour tier, 20000, runs out after 5 minutes at 200/s
// over 3 keys).
export function setup() {
  const perKeyPerSecond = RATE / KEYS.length;
  const runSeconds = seconds(DURATION);
  KEYS.forEach((key, i) => {
    const res = http.get(TARGET, {
      headers: { Authorization: `Bearer ${key}` },
      responseType: 'text',
      tags: { name: 'setup-probe' },
    });
    if (res.status !== 200 && res.status !== 429) {
      throw new Error(`key #${i} (${shown(key)}) got ${res.status} from ${TARGET}: ${res.body || res.error}`);
    }
    const policy = header(res, 'ratelimit-policy') || '(no rate-limit headers: exempt client?)';
    console.log(`key #${i} ${shown(key)}: ${res.status}, policy ${policy}`);
    const tier = /"([a-z-]+)";q=(\d+);w=(\d+)/g;
    let t;
    while ((t = tier.exec(policy)) !== null) {
      const [, name, limit, window] = t;
      const wanted = Math.round(perKeyPerSecond * Math.min(Number(window), runSeconds || Number(window)));
      if (Number(limit) < wanted) {
        console.warn(
          `key #${i} ${shown(key)}: tier "${name}" allows ${limit} per ${window} s but this run sends it ` +
            `~${wanted} (RATE=${RATE} over ${KEYS.length} keys, DURATION=${DURATION}): expect 429s`,
        );
      }
    }
  });
}

export default function () {
  const i = KEY_PICK === 'random'
    ? Math.floor(Math.random() * KEYS.length)
    : exec.scenario.iterationInTest % KEYS.length;
  const res = http.get(TARGET, {
    headers: { Authorization: `Bearer ${KEYS[i]}` },
    tags: { name: 'proxy', key: String(i) },
  });

  const limitH = header(res, 'x-ratelimit-limit');
  const remainingH = header(res, 'x-ratelimit-remaining');
  const resetH = header(res, 'x-ratelimit-reset');
  const policyH = header(res, 'ratelimit-policy');
  const headlineH = header(res, 'ratelimit');
  const limit = UINT.test(limitH || '') ? Number(limitH) : NaN;
  const remaining = UINT.test(remainingH || '') ? Number(remainingH) : NaN;
  const headline = HEADLINE.exec(headlineH || '');
  const now = Date.now() / 1000;

  check(res, {
    [ALLOW_429 ? 'status is 200 or 429' : 'status is 200']: (r) => EXPECTED.includes(r.status),
    'x-ratelimit-limit is an integer >= 1': () => limit >= 1,
    'x-ratelimit-remaining is an integer in [0, limit]': () => remaining >= 0 && remaining <= limit,
    'x-ratelimit-reset is a unix time within a day': () =>
      UINT.test(resetH || '') && Number(resetH) >= now - 5 && Number(resetH) <= now + 86400 + 5,
    'ratelimit-policy lists the tiers, the headline limit among them': () =>
      POLICY.test(policyH || '') && headline !== null && policyH.includes(`"${headline[1]}";q=${limit};`),
    'ratelimit agrees with x-ratelimit-remaining': () => headline !== null && Number(headline[2]) === remaining,
  });

  // Zeros are added too, so both counters appear in the summary of a clean run.
  const limited = res.status === 429;
  rateLimited.add(limited);
  proxy429.add(limited ? 1 : 0, { tier: limited && headline ? headline[1] : 'none' });
  proxyErrors.add(res.status !== 200 && !limited ? 1 : 0, { status: String(res.status) });
  if (limited) {
    check(res, {
      '429 carries retry-after >= 1': (r) => Number(header(r, 'retry-after')) >= 1,
      '429 has remaining 0': () => remaining === 0,
    });
  }
}
