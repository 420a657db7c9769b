// POST /publish latency at a fixed concurrency, for one body size: BATCH events per request
// (1 or 100). Prints p50/p95/p99 of http_req_duration. Used for the README's latency figures:
//   BASE_URL=http://127.0.0.1:8080 BATCH=100 k6 run --summary-trend-stats "p(50),p(95),p(99),max" k6/latency.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const BATCH = parseInt(__ENV.BATCH || '1', 10);

export const options = {
  vus: parseInt(__ENV.VUS || '8', 10),
  duration: __ENV.DURATION || '20s',
  thresholds: { http_req_failed: ['rate<0.01'] },
};

export default function () {
  const now = new Date().toISOString();
  const events = [];
  for (let i = 0; i < BATCH; i++) {
    events.push({
      topic: 'telemetry.satellite.status',
      event_id: `${__VU}-${__ITER}-${i}-${Math.random().toString(36).slice(2)}`,
      timestamp: now,
      source: `SAT-${String((__VU % 100) + 1).padStart(4, '0')}`,
      payload: { battery_charge_percent: 85.5, storage_usage_mb: 45000.0, signal_strength_dbm: -55.0, is_anomaly: false },
    });
  }
  const body = BATCH === 1 ? JSON.stringify(events[0]) : JSON.stringify(events);
  const res = http.post(`${BASE_URL}/publish`, body, { headers: { 'Content-Type': 'application/json' } });
  check(res, { 'accepted': (r) => r.status === 202 });
}
