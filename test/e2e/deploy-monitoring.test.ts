// deploy/prometheus/alerts.yml and deploy/grafana/gatehouse.json against a live
// `gatehouse serve` (issue 14): promtool (Debian package prometheus) accepts the rules and
// their unit tests pass; every metric either file names is one the live /metrics defines
// (its # TYPE lines: a labelled counter not yet incremented counts too); the series the
// alerts read exist at 0 from the start; the dashboard has what Grafana's import needs;
// README "Metrics" documents every gatehouse_ family the gateway exports.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { startGatehouse, REPO_ROOT } from './helpers/turn-servers.js';
import { exportedNames, metricNames } from './helpers/promql.js';
import { peerSkip } from './helpers/require-peer.js';
import { openTurnClient, PASSWORD, USER } from '../../bench/lib/turn-client.js';

const ALERTS = join(REPO_ROOT, 'deploy', 'prometheus', 'alerts.yml');
const DASHBOARD = join(REPO_ROOT, 'deploy', 'grafana', 'gatehouse.json');
const promtoolSkip = peerSkip(t, 'promtool');

/** Recorded by Prometheus itself for every target, never by the target. */
const PROMETHEUS_OWN = new Set(['up']);

const RULES = `keys:
  required: true
  deadline: 5s
rules:
  - id: no-exe
    when: { file_type: [exe] }
    action: block
quotas:
  - id: monitoring-daily
    groups: [contractors]
    limit: 1MiB
    period: day
`;

let metrics = '';
let exported = new Map<string, string>();
let gw: Awaited<ReturnType<typeof startGatehouse>>;

async function scrape(): Promise<string> {
  const res = await fetch(`${gw.adminUrl}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

t.before(async () => {
  // The bench's TURN client (bench/lib/turn-client.ts) logs in as its fixed user.
  gw = await startGatehouse({ rules: RULES, users: [{ name: USER, password: PASSWORD, groups: ['contractors'] }] });
  t.teardown(() => gw.stop());
  metrics = await scrape();
  exported = exportedNames(metrics);
});

function alertRules(): { alert: string; expr: string }[] {
  const doc = parse(readFileSync(ALERTS, 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

t.test('promtool check rules accepts alerts.yml', { skip: promtoolSkip }, async (t) => {
  const r = spawnSync('promtool', ['check', 'rules', ALERTS], { encoding: 'utf8' });
  t.equal(r.status, 0, `promtool check rules: ${r.stdout}${r.stderr}`);
  t.match(r.stdout, /SUCCESS: \d+ rules found/);
});

t.test('promtool test rules: the alerts fire on synthetic series and stay quiet otherwise', { skip: promtoolSkip }, async (t) => {
  const r = spawnSync('promtool', ['test', 'rules', 'alerts.test.yml'], { encoding: 'utf8', cwd: join(REPO_ROOT, 'deploy', 'prometheus') });
  t.equal(r.status, 0, `promtool test rules: ${r.stdout}${r.stderr}`);
  t.match(r.stdout, /SUCCESS/);
});

t.test('the alerts cover what issue 14 asks and name only exported metrics', async (t) => {
  const rules = alertRules();
  const names = new Set(rules.map((r) => r.alert));
  for (const a of [
    'GatehouseKeysMissing',
    'GatehouseFlowsBlocked',
    'GatehouseQuotaCrossed',
    'GatehouseEventsDropped',
    'GatehouseWorkerRestarts',
  ])
    t.ok(names.has(a), a);
  t.match(rules.find((r) => r.alert === 'GatehouseKeysMissing')!.expr, /reason=~?"[^"]*keys_missing/);
  for (const r of rules) {
    const used = metricNames(r.expr);
    t.ok(used.length > 0, `${r.alert} reads a metric`);
    for (const m of used) if (!PROMETHEUS_OWN.has(m)) t.ok(exported.has(m), `${r.alert}: ${m} is exported by /metrics`);
  }
});

t.test('the series the alerts read exist at 0 before anything happened', async (t) => {
  for (const line of [
    'gatehouse_gateway_blocked_total{reason="keys_missing"} 0',
    'gatehouse_gateway_blocked_total{reason="rekey_missing"} 0',
    'gatehouse_gateway_blocked_total{reason="policy"} 0',
    'gatehouse_alerts_total{action="blocked"} 0',
    'gatehouse_quota_crossings_total{quota="monitoring-daily"} 0',
    'gatehouse_events_total{event_type="flow_blocked"} 0',
    'gatehouse_events_redis_dropped_total 0',
    'gatehouse_worker_restarts_total 0',
  ])
    t.ok(metrics.split('\n').includes(line), line);
  t.match(metrics, /^# HELP gatehouse_worker_restarts_total .*0 with one process/m, 'the HELP line says why it is 0');
});

t.test('the new counters are wired to the live event stream: an Allocate moves them', async (t) => {
  const client = await openTurnClient();
  t.teardown(() => client.sock.close());
  t.ok(metrics.split('\n').includes('gatehouse_events_total{event_type="allocation"} 0'), 'no allocation yet');
  const r = await client.allocate(gw.port);
  t.ok(r.ok, `Allocate answered success (RFC 8656 §7.3), code ${r.code}`);
  let after = '';
  for (let i = 0; i < 50; i++) {
    after = await scrape();
    if (after.includes('gatehouse_events_total{event_type="allocation"} 1')) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(
    after.split('\n').includes('gatehouse_events_total{event_type="allocation"} 1'),
    'gatehouse_events_total counted the allocation event',
  );
  t.ok(after.split('\n').includes('gatehouse_turn_allocations 1'), 'one allocation');
});

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: { expr: string; refId: string; datasource?: { uid: string } }[];
}

t.test('the Grafana dashboard: importable shape, a Prometheus datasource input, only exported metrics', async (t) => {
  const d = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
  t.type(d.schemaVersion, 'number');
  t.ok(d.schemaVersion >= 36, 'schemaVersion of Grafana 9 or later');
  t.equal(d.id, null, 'no instance id (Grafana assigns one on import)');
  t.type(d.uid, 'string');
  t.type(d.title, 'string');
  t.same(
    d.__inputs.map((i: { name: string; type: string; pluginId: string }) => [i.name, i.type, i.pluginId]),
    [['DS_PROMETHEUS', 'datasource', 'prometheus']],
  );
  const panels: Panel[] = d.panels;
  const ids = panels.map((p) => p.id);
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  const used = new Set<string>();
  for (const p of panels) {
    t.ok(p.gridPos && p.gridPos.x + p.gridPos.w <= 24, `${p.title}: fits the 24-column grid`);
    if (p.type === 'row') continue;
    t.same(p.datasource, { type: 'prometheus', uid: '${DS_PROMETHEUS}' }, `${p.title}: the datasource input`);
    t.ok(p.targets && p.targets.length > 0, `${p.title}: has targets`);
    for (const target of p.targets ?? []) {
      t.equal(target.datasource?.uid, '${DS_PROMETHEUS}');
      const names = metricNames(target.expr);
      t.ok(names.length > 0, `${p.title} ${target.refId}: reads a metric`);
      for (const n of names) used.add(n);
    }
  }
  for (const v of d.templating.list) {
    const m = /label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)/.exec(v.definition ?? '');
    if (m) used.add(m[1]!);
  }
  for (const n of used) t.ok(exported.has(n), `dashboard: ${n} is exported by /metrics`);
  // What the issue asks the dashboard to show.
  for (const n of [
    'gatehouse_turn_allocations',
    'gatehouse_relayed_packets_total',
    'gatehouse_relayed_bytes_total',
    'gatehouse_auth_failures_total',
    'gatehouse_gateway_blocked_total',
    'gatehouse_events_total',
    'gatehouse_alerts_total',
    'gatehouse_quota_crossings_total',
    'gatehouse_events_queue_events',
    'gatehouse_events_dropped_total',
    'gatehouse_recordings_open',
    'gatehouse_scan_total',
    'process_cpu_user_seconds_total',
    'process_resident_memory_bytes',
  ])
    t.ok(used.has(n), `the dashboard shows ${n}`);
});

t.test('README "Metrics" names every gatehouse_ family /metrics exports', async (t) => {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Metrics');
  t.ok(start >= 0, 'README has a Metrics section');
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  for (const [name, type] of exported) {
    if (!name.startsWith('gatehouse_')) continue;
    t.ok(section.includes(`\`${name}\``), `${name} (${type}) is documented`);
  }
  t.match(section, /https:\/\/prometheus\.io\/docs\/practices\/naming\//);
});

t.test('metricNames reads names, not functions, labels, keywords or variables', async (t) => {
  t.same(
    metricNames(
      'sum by (instance, reason) (rate(a_total{reason=~"x|y", instance=~"$instance"}[$__rate_interval])) * 60 > 1 or b_total offset 5m',
    ),
    ['a_total', 'b_total'],
  );
  t.same(metricNames('max by (component) (gatehouse_degraded) == 1'), ['gatehouse_degraded']);
  t.same(metricNames('up{job="gatehouse"} == 0 and on (instance) c'), ['up', 'c']);
});
