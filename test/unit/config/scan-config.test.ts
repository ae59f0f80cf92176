// The `scan:` block of the configuration (src/config/config.ts; README "Malware scanning").
import t from 'tap';
import { defaultConfig, parseConfig } from '../../../src/config/config.js';
import { ConfigError } from '../../../src/util/errors.js';

t.test('scan defaults: nothing configured, 10 s, fail closed, 4 at once', async (t) => {
  t.same(defaultConfig().scan, { icap: null, clamd: null, timeout_ms: 10000, fail_open: false, max_concurrent: 4 });
});

t.test('a full scan block parses', async (t) => {
  const c = parseConfig(
    'scan:\n  icap: icap://127.0.0.1:1344/srv_clamav\n  clamd: unix:/run/clamav/clamd.ctl\n  timeout_ms: 2500\n  fail_open: true\n  max_concurrent: 8\n',
    'g.yaml',
  );
  t.same(c.scan, {
    icap: 'icap://127.0.0.1:1344/srv_clamav',
    clamd: 'unix:/run/clamav/clamd.ctl',
    timeout_ms: 2500,
    fail_open: true,
    max_concurrent: 8,
  });
  t.equal(parseConfig('scan: { clamd: "tcp://[::1]:3310" }\n').scan.clamd, 'tcp://[::1]:3310');
  t.equal(parseConfig('scan: { clamd: "tcp://av.internal:3310" }\n').scan.clamd, 'tcp://av.internal:3310');
});

const broken: [string, string, RegExp][] = [
  ['http scheme', 'scan:\n  icap: http://x:1344/srv\n', /^f\.yaml:2:9: scan\.icap: .*icap:\/\//],
  ['no service', 'scan:\n  icap: icap://127.0.0.1:1344/\n', /^f\.yaml:2:9: scan\.icap: .*names a service/],
  ['credentials in URL', 'scan:\n  icap: icap://u:p@127.0.0.1/srv\n', /^f\.yaml:2:9: scan\.icap: .*no user or password/],
  ['clamd relative unix path', 'scan:\n  clamd: unix:clamd.sock\n', /^f\.yaml:2:10: scan\.clamd: expected unix:\/absolute\/path/],
  ['clamd without port', 'scan:\n  clamd: tcp://127.0.0.1\n', /^f\.yaml:2:10: scan\.clamd: expected tcp:\/\/host:port/],
  ['clamd port 0', 'scan:\n  clamd: tcp://127.0.0.1:0\n', /^f\.yaml:2:10: scan\.clamd: port 0 is out of range/],
  ['timeout too small', 'scan:\n  timeout_ms: 5\n', /^f\.yaml:2:15: scan\.timeout_ms: /],
  ['max_concurrent 0', 'scan:\n  max_concurrent: 0\n', /^f\.yaml:2:19: scan\.max_concurrent: /],
  ['fail_open not a boolean', 'scan:\n  fail_open: maybe\n', /^f\.yaml:2:14: scan\.fail_open: /],
  ['unknown key', 'scan:\n  icapp: x\n', /^f\.yaml:2:3: scan\.icapp: unknown key/],
];
for (const [name, text, re] of broken) {
  t.test(`located error: ${name}`, async (t) => {
    t.throws(() => parseConfig(text, 'f.yaml'), ConfigError);
    try {
      parseConfig(text, 'f.yaml');
    } catch (e) {
      t.match((e as Error).message, re);
    }
  });
}

t.test('the ICAP password is never echoed', async (t) => {
  try {
    parseConfig('scan:\n  icap: icap://user:hunter2pw@127.0.0.1/srv\n', 'f.yaml');
    t.fail('should throw');
  } catch (e) {
    t.notMatch((e as Error).message, /hunter2pw/);
  }
});
