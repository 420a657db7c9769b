// What every load script reads from the environment (where the aggregator is, the stages of
// its ramping-vus scenario) and the readiness check of its setup().
import http from 'k6/http';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');

function parseStages(spec) {
  return spec.split(',').map((s) => {
    const [duration, target] = s.trim().split(':');
    return { duration, target: parseInt(target, 10) };
  });
}

// K6_STAGES="30s:50,1m:100,30s:0" when set, else `short` with K6_SHORT=1, else `full`.
export function stages(full, short) {
  if (__ENV.K6_STAGES) return parseStages(__ENV.K6_STAGES);
  const isShort = __ENV.K6_SHORT && __ENV.K6_SHORT !== '0' && __ENV.K6_SHORT !== 'false';
  return isShort ? short : full;
}

// Fails the run at once when the aggregator at BASE_URL is not ready.
export function assertReady() {
  const res = http.get(`${BASE_URL}/ready`, { tags: { name: 'GET /ready' } });
  if (res.status !== 200) {
    throw new Error(`aggregator at ${BASE_URL} is not ready (GET /ready: ${res.status})`);
  }
}
