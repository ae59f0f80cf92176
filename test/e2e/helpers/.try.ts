import { startCoturn, stunBindingUdp } from './turn-servers.js';
const s = await startCoturn();
console.log(s.port, s.relayPorts, await stunBindingUdp('127.0.0.1', s.port));
await s.stop();
console.log(s.exitStatus(), s.output().split('\n').slice(0, 60).join('\n'));
