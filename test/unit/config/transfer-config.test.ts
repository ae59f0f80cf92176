// Issue 9: policy.max_file_bytes and policy.transfer_pause_ms, defaults and located errors.
import t from 'tap';
import { defaultConfig, parseConfig } from '../../../src/config/config.js';

t.test('defaults', async (t) => {
  const c = defaultConfig();
  t.equal(c.policy.max_file_bytes, '100MiB');
  t.equal(c.policy.transfer_pause_ms, 2000);
});

t.test('values and errors', async (t) => {
  const c = parseConfig('policy:\n  max_file_bytes: 2GiB\n  transfer_pause_ms: 500\n', 'f.yaml');
  t.equal(c.policy.max_file_bytes, '2GiB');
  t.equal(c.policy.transfer_pause_ms, 500);
  t.throws(() => parseConfig('policy:\n  max_file_bytes: lots\n', 'f.yaml'), /^f\.yaml:2:19: policy\.max_file_bytes: .*100MiB/);
  t.throws(() => parseConfig('policy:\n  max_file_bytes: 10B\n', 'f.yaml'), /policy\.max_file_bytes: .*1KiB to 1TiB/);
  t.throws(() => parseConfig('policy:\n  transfer_pause_ms: 10\n', 'f.yaml'), /^f\.yaml:2:22: policy\.transfer_pause_ms: /);
  t.throws(() => parseConfig('policy:\n  transfer_pause: 10\n', 'f.yaml'), /transfer_pause/);
});
