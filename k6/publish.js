// Load test of POST /publish: ramping virtual users, each posting batches of valid telemetry
// events of which ~30% re-send an earlier (topic, event_id) of the same VU, as an
// at-least-once client would. Every request must get 202 with the whole batch accepted.
//
//   k6 run k6/publish.js                       # 30s -> 50 VUs, 1m -> 100 VUs, 30s -> 0
//   K6_SHORT=1 k6 run k6/publish.js            # ~15 s, at most 20 VUs (CI)
//   scripts/k6.sh publish [--short]            # installs k6, brings up a stack if needed
//
// Environment:
//   BASE_URL        aggregator address (default http://127.0.0.1:8080)
//   K6_SHORT=1      short stages; K6_STAGES="30s:50,1m:100,30s:0" overrides both
//   BATCH_SIZE      events per request (default 10; 1 posts a single event object)
//   DUPLICATE_RATE  share of events that re-send an earlier one (default 0.3)
//   SLEEP           seconds each VU pauses between requests (default 0.1)
//   RETRIES_503     retries of a request answered 503, after Retry-After (default 1)
//   API_TOKEN       sent as a bearer token when set
//
// Custom counters (in the summary): events_sent (accepted with 202), events_new,
// events_duplicate, publish_retries (requests retried after a 503). On a quiet aggregator, /stats must grow by exactly events_sent
// received and events_new unique_processed: scripts/k6.sh checks that.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, stages } from './lib/run.js';
import { newEvent, readyRun } from './lib/events.js';

const BATCH_SIZE = Math.max(1, parseInt(__ENV.BATCH_SIZE || '10', 10));
const DUPLICATE_RATE = parseFloat(__ENV.DUPLICATE_RATE || '0.3');
const PAUSE = parseFloat(__ENV.SLEEP || '0.1');
const RETRIES_503 = parseInt(__ENV.RETRIES_503 || '1', 10);
const HISTORY = 1000; // earlier events a VU remembers for re-sending

const FULL_STAGES = [
  { duration: '30s', target: 50 }, // ramp up
  { duration: '1m', target: 100 }, // peak
  { duration: '30s', target: 0 }, // ramp down
];
const SHORT_STAGES = [
  { duration: '5s', target: 10 },
  { duration: '5s', target: 20 },
  { duration: '5s', target: 0 },
];

export const options = {
  scenarios: {
    publish: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: stages(FULL_STAGES, SHORT_STAGES),
      gracefulRampDown: '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

const eventsSent = new Counter('events_sent');
const eventsNew = new Counter('events_new');
const eventsDuplicate = new Counter('events_duplicate');
const publishRetries = new Counter('publish_retries');

// Per-VU state (each VU has its own copy of the module scope).
const sent = []; // earlier events of this VU, for re-sending

export function setup() {
  return readyRun();
}

export default function (data) {
  const batch = [];
  const fresh = [];
  for (let i = 0; i < BATCH_SIZE; i++) {
    if (sent.length > 0 && Math.random() < DUPLICATE_RATE) {
      // Re-send an earlier, accepted event unchanged: same (topic, event_id), same body.
      batch.push(sent[Math.floor(Math.random() * sent.length)]);
    } else {
      const ev = newEvent('k6', data.runId);
      batch.push(ev);
      fresh.push(ev);
    }
  }
  const dups = batch.length - fresh.length;

  const body = JSON.stringify(BATCH_SIZE === 1 ? batch[0] : batch);
  // The key makes a retry of this request safe: JetStream drops re-published messages with
  // the same Nats-Msg-Id (<key>:<i>) within its duplicate window.
  const headers = {
    'Content-Type': 'application/json',
    'Idempotency-Key': `k6-${data.runId}-${__VU}-${__ITER}`,
  };
  if (__ENV.API_TOKEN) headers.Authorization = `Bearer ${__ENV.API_TOKEN}`;
  const post = () =>
    http.post(`${BASE_URL}/publish`, body, { headers, tags: { name: 'POST /publish' } });

  let res = post();
  for (let attempt = 0; res.status === 503 && attempt < RETRIES_503; attempt++) {
    // Load shed (MAX_CONCURRENT_PUBLISH) or broker slow: honour Retry-After, as a real
    // at-least-once client would. The 503 itself still counts in http_req_failed.
    publishRetries.add(1);
    sleep(Math.min(parseFloat(res.headers['Retry-After']) || 1, 5));
    res = post();
  }

  const ok = check(res, {
    'status is 202': (r) => r.status === 202,
    'whole batch accepted': (r) => {
      try {
        return r.json('accepted') === batch.length;
      } catch (_) {
        return false;
      }
    },
  });
  if (res.status === 202) {
    // Only accepted events may be re-sent later, so a "duplicate" is always one.
    for (const ev of fresh) sent.push(ev);
    while (sent.length > HISTORY) sent.shift();
    eventsSent.add(batch.length);
    eventsNew.add(batch.length - dups);
    eventsDuplicate.add(dups);
  } else if (!ok && res.status !== 0) {
    console.warn(`POST /publish -> ${res.status}: ${String(res.body).slice(0, 200)}`);
  }
  if (PAUSE > 0) sleep(PAUSE);
}
