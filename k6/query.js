// Load test of the read side: each iteration reads GET /stats, then GET /events?limit=100 and
// follows its `next` cursor once (keyset pagination), like an operator's dashboard paging.
//
//   k6 run k6/query.js                         # 30s -> 25 VUs, 1m -> 50 VUs, 30s -> 0
//   K6_SHORT=1 k6 run k6/query.js              # ~15 s, at most 10 VUs (CI)
//   scripts/k6.sh query [--short]              # installs k6, brings up a seeded stack if needed
//
// Environment: BASE_URL (default http://127.0.0.1:8080), K6_SHORT=1, K6_STAGES="30s:25,1m:50,30s:0",
// SLEEP (seconds between iterations, default 0.1), TOPIC (also query ?topic=TOPIC when set).
// The second page is only requested when the first one has a `next` cursor, so an empty
// database passes too (seed it first: scripts/k6.sh does with a private stack).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, assertReady, stages } from './lib/run.js';

const PAUSE = parseFloat(__ENV.SLEEP || '0.1');
const TOPIC = __ENV.TOPIC || '';

const FULL_STAGES = [
  { duration: '30s', target: 25 },
  { duration: '1m', target: 50 },
  { duration: '30s', target: 0 },
];
const SHORT_STAGES = [
  { duration: '5s', target: 5 },
  { duration: '5s', target: 10 },
  { duration: '5s', target: 0 },
];

export const options = {
  scenarios: {
    query: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: stages(FULL_STAGES, SHORT_STAGES),
      gracefulRampDown: '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
    'http_req_duration{name:GET /stats}': ['p(95)<500'],
    'http_req_duration{name:GET /events}': ['p(95)<500'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

const pagesFollowed = new Counter('pages_followed');

export function setup() {
  assertReady();
}

function json(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

function checkPage(res, limit) {
  const body = json(res);
  check(res, {
    'events: status is 200': (r) => r.status === 200,
    'events: a page of at most limit': () =>
      body !== null && Array.isArray(body.events) && body.events.length <= limit,
    'events: next is a cursor or null': () =>
      body !== null && (body.next === null || typeof body.next === 'string'),
  });
  return body;
}

export default function () {
  const stats = http.get(`${BASE_URL}/stats`, { tags: { name: 'GET /stats' } });
  const s = json(stats);
  check(stats, {
    'stats: status is 200': (r) => r.status === 200,
    'stats: received = unique + duplicates': () =>
      s !== null && s.received === s.unique_processed + s.duplicate_dropped,
  });

  const filter = TOPIC ? `&topic=${encodeURIComponent(TOPIC)}` : '';
  const first = http.get(`${BASE_URL}/events?limit=100${filter}`, {
    tags: { name: 'GET /events' },
  });
  const page = checkPage(first, 100);
  if (page && page.next) {
    const second = http.get(
      `${BASE_URL}/events?limit=100${filter}&after=${encodeURIComponent(page.next)}`,
      { tags: { name: 'GET /events' } },
    );
    const next = checkPage(second, 100);
    pagesFollowed.add(1);
    // Keyset pagination: the second page holds none of the first page's events.
    if (next && Array.isArray(next.events) && Array.isArray(page.events)) {
      const seen = new Set(page.events.map((e) => `${e.topic}\u0000${e.event_id}`));
      check(second, {
        'events: pages do not overlap': () =>
          next.events.every((e) => !seen.has(`${e.topic}\u0000${e.event_id}`)),
      });
    }
  }
  if (PAUSE > 0) sleep(PAUSE);
}
