/**
 * Issue 9 wiring in startGateway: a `scan:` rule whose scanner is not configured stops the
 * start with a located error; with `scan.icap` configured the scanner's stats are on /metrics.
 */
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../../src/config/config.js';
import { startGateway } from '../../../src/gateway/gateway.js';
import { silentLogger } from '../../../src/util/log.js';
import { reservePortBlock } from '../../e2e/helpers/ports.js';

const sink = () => new Writable({ write: (_c, _e, cb) => cb() });

async function setup(scanBlock: string) {
  const dir = mkdtempSync(join(tmpdir(), 'gh-scanstart-'));
  const rules = join(dir, 'rules.yaml');
  writeFileSync(rules, 'rules:\n  - id: av\n    when:\n      scan: icap\n    action: block\n');
  // A reserved block (below the ephemeral range, locked against parallel tests): a TCP
  // port the kernel freed may be another test's UDP relay port a moment later.
  const block = await reservePortBlock(20);
  const turnPort = block.port(0);
  const adminPort = block.port(1);
  const relayLow = block.port(10);
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
  return { cfg, adminPort, rules, block };
}

t.test('scan: icap without scan.icap: the start fails with the rule file position', async (t) => {
  const { cfg, rules, block } = await setup('');
  t.teardown(() => block.release());
  await t.rejects(startGateway(cfg, silentLogger, sink()), {
    message: new RegExp(`^${rules.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:\\d+: rules\\[0\\]\\.when\\.scan: scan: icap needs a scanner`),
  });
});

t.test('scan.icap configured: the gateway starts and /metrics shows the scanner', async (t) => {
  const { cfg, adminPort, block } = await setup('scan:\n  icap: icap://127.0.0.1:1/avscan\n');
  t.teardown(() => block.release());
  const gw = await startGateway(cfg, silentLogger, sink());
  t.teardown(() => gw.stop());
  t.equal(gw.policy.current.rules.length, 1);
  const m = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  t.match(m, /gatehouse_scan_in_flight\{scanner="icap"\} 0/);
  t.match(m, /# TYPE gatehouse_scan_total counter/);
});
