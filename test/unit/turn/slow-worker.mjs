// A stand-in relay worker for workers-ready.test.ts. It says hello; given a directory, the
// first worker of each index says ready (and leaves DIR/ready-<index>), a later one of the
// same index does not. Then it hangs: it never exits by itself.
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
const [dir] = process.argv.slice(2);
process.on('message', (m) => {
  const marker = dir && join(dir, `ready-${m.index}`);
  if (marker && !existsSync(marker)) {
    writeFileSync(marker, String(process.pid));
    process.send({ type: 'ready' });
  }
});
process.send({ type: 'hello' });
setInterval(() => {}, 1 << 30);
