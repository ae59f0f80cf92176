// deploy/gatehouse.service and its drop-in deploy/gatehouse.service.d/pcp-firewall.conf
// (issue 14) through the real `systemd-analyze` (Debian package systemd): `verify` accepts
// both without a single warning (it exits 0 even on an unknown key, so stderr is read too),
// and the offline `security` report shows CAP_NET_ADMIN only with the drop-in.
//
// Paths: `verify` checks that ExecStart's executable exists. The unit names the installed
// layout (/usr/bin/node, /usr/lib/gatehouse/bin/gatehouse.js); the copy verified here
// differs only in /usr/lib/gatehouse, rewritten to this checkout, so the script path is
// a real file too (the test checks it), and /usr/bin/node, rewritten to this test's own
// Node only where Node is not installed there. Nothing else is changed.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { peerSkip } from '../../e2e/helpers/require-peer.js';

const ROOT = resolve(import.meta.dirname, '../../..');
const UNIT = join(ROOT, 'deploy', 'gatehouse.service');
const DROPIN = join(ROOT, 'deploy', 'gatehouse.service.d', 'pcp-firewall.conf');
const skip = peerSkip(t, 'systemd-analyze');

/** The unit as installed here: /usr/lib/gatehouse is this checkout. */
function localUnit(): string {
  let s = readFileSync(UNIT, 'utf8').replaceAll('/usr/lib/gatehouse/', `${ROOT}/`);
  if (!existsSync('/usr/bin/node')) s = s.replaceAll('/usr/bin/node ', `${process.execPath} `);
  return s;
}

/** A unit directory with the unit, and the drop-in beside it when asked. */
function layout(t: Test, withDropIn: boolean): string {
  const dir = mkdtempSync(join(tmpdir(), 'gh-systemd-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'gatehouse.service'), localUnit());
  if (withDropIn) {
    mkdirSync(join(dir, 'gatehouse.service.d'));
    cpSync(DROPIN, join(dir, 'gatehouse.service.d', 'pcp-firewall.conf'));
  }
  return join(dir, 'gatehouse.service');
}

function analyze(args: string[]) {
  // --man=no: no man page named; SYSTEMD_LOG_LEVEL=info keeps every warning visible.
  return spawnSync('systemd-analyze', args, { encoding: 'utf8', env: { ...process.env, SYSTEMD_LOG_LEVEL: 'info' } });
}

function security(unit: string): Map<string, boolean> {
  const r = analyze(['security', '--offline=true', '--json=short', unit]);
  if (r.status !== 0) throw new Error(`systemd-analyze security: ${r.status} ${r.stderr}`);
  const rows = JSON.parse(r.stdout) as { name: string; set: boolean }[];
  return new Map(rows.map((x) => [x.name, x.set]));
}

t.test('the unit names the installed layout; the script exists in this checkout', { skip }, async (t) => {
  const unit = readFileSync(UNIT, 'utf8');
  t.match(unit, /^ExecStart=\/usr\/bin\/node \/usr\/lib\/gatehouse\/bin\/gatehouse\.js serve --config \/etc\/gatehouse\/gatehouse\.yaml$/m);
  t.ok(existsSync(join(ROOT, 'bin', 'gatehouse.js')), 'bin/gatehouse.js, the path ExecStart names under /usr/lib/gatehouse');
  for (const key of [
    'ProtectSystem=strict',
    'PrivateTmp=yes',
    'NoNewPrivileges=yes',
    'StateDirectory=gatehouse',
    'MemoryDenyWriteExecute=no',
  ])
    t.match(unit, new RegExp(`^${key}$`, 'm'), key);
  t.match(unit, /^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$/m, 'the bounding set is NET_BIND_SERVICE alone');
  t.notMatch(unit, /^[^#\n]*CAP_NET_ADMIN/m, 'no NET_ADMIN in the unit itself (only in comments)');
  t.match(unit, /^#.*MemoryDenyWriteExecute must stay off: V8/m, 'the comment says why W^X is off');
  t.match(readFileSync(DROPIN, 'utf8'), /pcp\.firewall: nftables/, 'the drop-in names the key that needs it');
});

for (const withDropIn of [false, true]) {
  t.test(
    `systemd-analyze verify accepts the unit${withDropIn ? ' with the PCP firewall drop-in' : ''}, with no warning`,
    { skip },
    async (t) => {
      const unit = layout(t, withDropIn);
      const r = analyze(['verify', '--man=no', '--generators=no', unit]);
      t.equal(r.status, 0, `exit status (stderr: ${r.stderr})`);
      t.equal(r.stderr.trim(), '', 'no warning (unknown key, bad value, missing executable)');
      t.notMatch(r.stdout + r.stderr, /Unknown key|Failed to parse|ignoring/i);
    },
  );
}

t.test('the check is real: an unknown key in the drop-in or a missing executable is reported', { skip }, async (t) => {
  const unit = layout(t, true);
  writeFileSync(join(unit + '.d', 'pcp-firewall.conf'), readFileSync(DROPIN, 'utf8') + 'CapabilityBoundingSett=CAP_NET_ADMIN\n');
  const r = analyze(['verify', '--man=no', '--generators=no', unit]);
  t.match(r.stderr, /Unknown key 'CapabilityBoundingSett'/, 'the drop-in is read by verify');
  writeFileSync(
    unit,
    localUnit()
      .replace(`${ROOT}/bin/gatehouse.js`, '/nonexistent/gatehouse.js')
      .replace(/^ExecStart=\S+/m, 'ExecStart=/nonexistent/node'),
  );
  const m = analyze(['verify', '--man=no', '--generators=no', unit]);
  t.not(m.status, 0, 'a missing ExecStart executable fails verify');
});

t.test('CAP_NET_ADMIN only with the drop-in; AF_NETLINK, NoNewPrivileges, PrivateTmp either way', { skip }, async (t) => {
  const base = security(layout(t, false));
  const pcp = security(layout(t, true));
  t.equal(base.get('CapabilityBoundingSet=~CAP_NET_ADMIN'), true, 'without the drop-in: no network configuration privilege');
  t.equal(pcp.get('CapabilityBoundingSet=~CAP_NET_ADMIN'), false, 'with it: CAP_NET_ADMIN is in the bounding set');
  for (const s of [base, pcp]) {
    t.equal(s.get('NoNewPrivileges='), true, 'NoNewPrivileges');
    t.equal(s.get('PrivateTmp='), true, 'PrivateTmp');
    t.equal(s.get('ProtectSystem='), true, 'ProtectSystem');
    t.equal(s.get('CapabilityBoundingSet=~CAP_SYS_ADMIN'), true, 'no CAP_SYS_ADMIN');
    t.equal(s.get('RestrictAddressFamilies=~AF_PACKET'), true, 'no packet sockets');
    t.equal(s.get('MemoryDenyWriteExecute='), false, 'W^X off (V8 JIT)');
  }
});
