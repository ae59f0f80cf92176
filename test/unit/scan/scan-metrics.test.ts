/** /metrics of the malware scanners (GuardedScanner.stats): gatehouse_scan_total{scanner,outcome} and friends. */
import t from 'tap';
import { createMetrics } from '../../../src/admin/metrics.js';
import { emptyStats } from '../../../src/scan/guard.js';

t.test('scan counters and gauges', async (t) => {
  const s = emptyStats();
  const reg = createMetrics(() => undefined, { scanners: () => [{ scanner: 'icap', stats: s }] });
  s.scans = 5;
  s.clean = 2;
  s.infected = 1;
  s.failed_closed = 2;
  s.errors.timeout = 1;
  s.errors.unreachable = 1;
  s.in_flight = 3;
  let m = await reg.metrics();
  t.match(m, /gatehouse_scan_total\{scanner="icap",outcome="clean"\} 2/);
  t.match(m, /gatehouse_scan_total\{scanner="icap",outcome="infected"\} 1/);
  t.match(m, /gatehouse_scan_total\{scanner="icap",outcome="failed_closed"\} 2/);
  t.match(m, /gatehouse_scan_errors_total\{scanner="icap",kind="unreachable"\} 1/);
  t.match(m, /gatehouse_scan_in_flight\{scanner="icap"\} 3/);
  s.infected = 4;
  m = await reg.metrics();
  t.match(m, /gatehouse_scan_total\{scanner="icap",outcome="infected"\} 4/, 'follows the plain counters');
  t.notMatch(await createMetrics(() => undefined).metrics(), /gatehouse_scan_total/, 'no scanners, no family');
});
