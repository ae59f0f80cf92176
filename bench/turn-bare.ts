/**
 * A bare TurnServer for bench/turn-relay.ts (`--bare`): the relay alone, no gateway, no
 * flow hooks, so every flow is fast-path eligible when `turn.fast_path: auto`. It reads
 * the same YAML the bench writes for `gatehouse serve` (turn: and users: only).
 *
 *   node --import tsx bench/turn-bare.ts CONFIG.yaml
 */
import { loadConfig } from '../src/config/config.js';
import { TurnServer } from '../src/turn/server.js';

const cfg = loadConfig(process.argv[2] ?? null);
const server = new TurnServer({
  config: cfg,
  users: { lookup: (n) => cfg.users.find((u) => u.name === n) },
});
await server.start();
process.stderr.write(`turn-bare: listening ${JSON.stringify(server.addresses())}, fast path ${server.fastPath() ? 'on' : 'off'}\n`);
// bench/turn-idle.ts: SIGUSR2 asks for the heap after a full collection (node --expose-gc).
process.on('SIGUSR2', () => {
  (globalThis as { gc?: () => void }).gc?.();
  process.stderr.write(`turn-bare: memory ${JSON.stringify(process.memoryUsage())}\n`);
});
const stop = (): void => void server.stop().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
