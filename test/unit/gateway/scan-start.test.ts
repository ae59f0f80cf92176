/**
 * Issue 9 wiring in startGateway: a `scan:` rule whose scanner is not configured stops the
 * start with a located error; with `scan.icap` configured the scanner's stats are on /metrics.
 */
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { Writable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../../src/config/config.js';
import { startGateway } from '../../../src/gateway/gateway.js';
import { silentLogger } from '../../../src/util/log.js';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

const sink = () => new Writable({ write: (_c, _e, cb) => cb() });

async function setup(scanBlock: string) {
  const dir = mkdtempSync(join(tmpdir(), 'gh-scanstart-'));
  const rules = join(dir, 'rules.yaml');
  writeFileSync(rules, 'rules:\n  - id: av\n    when:\n      scan: icap\n    action: block\n');
  const turnPort = await freePort();
  const adminPort = await freePort();
  const relayLow = 42000 + (turnPort % 1000) * 10;
  const cfg = parseConfig(
    `data_dir: ${join(dir, 'data')}
turn:
  listen: [udp://127.0.0.1:${turnPort}]
  relay_ports: [${relayLow}, ${relayLow + 9}]
pcp:
  listen: []
admin:
  listen: http://127.0.0.1:${adminPort}
policy:
  rules: ${rules}
${scanBlock}`,
    'gatehouse.yaml',
  );
  return { cfg, adminPort, rules };
}

t.test('scan: icap without scan.icap: the start fails with the rule file position', async (t) => {
  const { cfg, rules } = await setup('');
  await t.rejects(startGateway(cfg, silentLogger, sink()), {
    message: new RegExp(`^${rules.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:\\d+: rules\\[0\\]\\.when\\.scan: scan: icap needs a scanner`),
  });
});

t.test('scan.icap configured: the gateway starts and /metrics shows the scanner', async (t) => {
  const { cfg, adminPort } = await setup('scan:\n  icap: icap://127.0.0.1:1/avscan\n');
  const gw = await startGateway(cfg, silentLogger, sink());
  t.teardown(() => gw.stop());
  t.equal(gw.policy.current.rules.length, 1);
  const m = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  t.match(m, /gatehouse_scan_in_flight\{scanner="icap"\} 0/);
  t.match(m, /# TYPE gatehouse_scan_total counter/);
});
