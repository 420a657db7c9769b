// What k6/publish.js and k6/seed.js send: valid telemetry events, unique across VUs,
// iterations and runs, and the set-up both share. Imported, so each VU has its own copy
// of this module's state (the counter).
import { assertReady } from './run.js';

export const TOPICS = [
  'telemetry.satellite.status',
  'telemetry.satellite.power',
  'telemetry.satellite.thermal',
  'telemetry.ground.link',
  'comms.antenna.alert',
  'comms.downlink.quality',
  'attitude.camera.fault',
  'attitude.gyro.drift',
  'payload.imager.capture',
  'orbit.position.update',
];

let counter = 0;

function randomBetween(min, max) {
  return Math.round((min + Math.random() * (max - min)) * 10) / 10;
}

// A new event of this VU; its event_id starts with `prefix` and the run's id.
export function newEvent(prefix, runId) {
  counter += 1;
  const sat = 1 + Math.floor(Math.random() * 100);
  return {
    topic: TOPICS[Math.floor(Math.random() * TOPICS.length)],
    // Unique across VUs, iterations and runs (runId comes from setup()).
    event_id: `${prefix}-${runId}-${__VU}-${counter}`,
    timestamp: new Date().toISOString(),
    source: `SAT-${String(sat).padStart(4, '0')}`,
    payload: {
      battery_charge_percent: randomBetween(20, 100),
      storage_usage_mb: randomBetween(1000, 64000),
      signal_strength_dbm: randomBetween(-110, -40),
      is_anomaly: Math.random() < 0.02,
    },
  };
}

// setup(): the aggregator must be ready; the run's id, for unique event ids.
export function readyRun() {
  assertReady();
  return { runId: `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}` };
}
