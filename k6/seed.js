// The load test of seed 002 (the pub-sub log aggregator report, "Load Testing (K6)"), as it
// describes it: ramping virtual users, each POSTing SINGLE events to /publish with no think
// time, 30% of them re-sending an earlier event of the same VU; stages 30s -> 50 VUs,
// 1m -> 100 VUs, 30s -> 0. The seed reports 0% errors and p95 < 50 ms for it, so those are
// the thresholds: one failed request (a 503 shed included) fails the run.
//
//   scripts/k6.sh seed [--short]               # installs k6, brings up a stack if needed
//   k6 run k6/seed.js                          # against BASE_URL
//   VUS=1000 scripts/k6.sh seed                # real overload: 30s -> 500, 1m -> 1000, 30s -> 0
//
// Environment:
//   BASE_URL        aggregator address (default http://127.0.0.1:8080)
//   VUS             peak virtual users (default 100, the seed's); the first stage ramps to half
//   K6_SHORT=1      short stages (5s -> 10, 5s -> 20, 5s -> 0); K6_STAGES="30s:50,1m:100,30s:0"
//                   overrides both
//   DUPLICATE_RATE  share of requests that re-send an earlier event (default 0.3)
//   API_TOKEN       sent as a bearer token when set
//
// No retries and no pauses (the seed's client has neither): a 503 is counted, not retried.
// Custom counters (in the summary): events_sent (accepted with 202), events_new,
// events_duplicate, publish_requests, publish_shed (answered 503). On a quiet aggregator,
// /stats must grow by exactly events_sent received, events_new unique_processed and
// events_duplicate duplicate_dropped: scripts/k6.sh checks that.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { newEvent, readyRun } from './lib/events.js';
import { BASE_URL, stages } from './lib/run.js';

const DUPLICATE_RATE = parseFloat(__ENV.DUPLICATE_RATE || '0.3');
const PEAK = Math.max(1, parseInt(__ENV.VUS || '100', 10));
const HISTORY = 1000; // earlier events a VU remembers for re-sending

const SHORT_STAGES = [
  { duration: '5s', target: 10 },
  { duration: '5s', target: 20 },
  { duration: '5s', target: 0 },
];
// The seed's stages, scaled by VUS (100: exactly the seed's).
const SEED_STAGES = [
  { duration: '30s', target: Math.max(1, Math.round(PEAK / 2)) }, // ramp up
  { duration: '1m', target: PEAK }, // peak load
  { duration: '30s', target: 0 }, // ramp down
];

export const options = {
  scenarios: {
    seed: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: stages(SEED_STAGES, SHORT_STAGES),
      gracefulRampDown: '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<=0'],
    http_req_duration: ['p(95)<50'],
    checks: ['rate>=1'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

const eventsSent = new Counter('events_sent');
const eventsNew = new Counter('events_new');
const eventsDuplicate = new Counter('events_duplicate');
const publishRequests = new Counter('publish_requests');
const publishShed = new Counter('publish_shed');

// Per-VU state (each VU has its own copy of the module scope).
const sent = []; // earlier accepted events of this VU, for re-sending

export function setup() {
  return readyRun();
}

export default function (data) {
  const duplicate = sent.length > 0 && Math.random() < DUPLICATE_RATE;
  // A duplicate re-sends an earlier, accepted event unchanged: same (topic, event_id), body.
  const ev = duplicate ? sent[Math.floor(Math.random() * sent.length)] : newEvent('seed', data.runId);
  const headers = { 'Content-Type': 'application/json' };
  if (__ENV.API_TOKEN) headers.Authorization = `Bearer ${__ENV.API_TOKEN}`;
  const res = http.post(`${BASE_URL}/publish`, JSON.stringify(ev), {
    headers,
    tags: { name: 'POST /publish' },
  });
  publishRequests.add(1);

  const ok = check(res, {
    'status is 202': (r) => r.status === 202,
    'event accepted': (r) => {
      try {
        return r.json('accepted') === 1;
      } catch (_) {
        return false;
      }
    },
  });
  if (res.status === 202) {
    if (!duplicate) {
      sent.push(ev);
      while (sent.length > HISTORY) sent.shift();
    }
    eventsSent.add(1);
    eventsNew.add(duplicate ? 0 : 1);
    eventsDuplicate.add(duplicate ? 1 : 0);
  } else if (res.status === 503) {
    publishShed.add(1);
  } else if (!ok && res.status !== 0) {
    console.warn(`POST /publish -> ${res.status}: ${String(res.body).slice(0, 200)}`);
  }
}
