// The NFQUEUE reader of the firewall e2e tests, run INSIDE the gateway namespace (a netlink
// socket belongs to the namespace of the process that opens it):
//
//   lab.spawn(gw, process.execPath, ['--import', 'tsx', 'test/e2e/helpers/nfq-child.ts', queue, failOpen, holdMs])
//
// Verdict by the UDP payload's text: "DROP..." -> drop, "HOLD..." -> held, accepted holdMs
// later (a delayed verdict), anything else -> accept. One JSON line per packet on stdout:
// { id, hook, src, sport, dst, dport, data, verdict, at }; first line {"ready":true} or
// {"error": "..."}. stdin lines: "close" (reader.close(), then {"closed":true}; the process
// stays so a test can check the queue without a reader), "stats" ({"stats":{...}}).
import { createInterface } from 'node:readline';
import { NfQueueReader } from '../../../src/pcp/firewall/nfqueue.js';
import { decodeIp, decodeUdp } from '../../../src/wire/netpkt.js';

const [queue = '0', failOpen = '0', holdMs = '200'] = process.argv.slice(2);
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');

let reader: NfQueueReader;
try {
  reader = NfQueueReader.open({ queue: Number(queue), failOpen: failOpen === '1', maxHoldMs: 5000 }, (p, q) => {
    const ip = decodeIp(p.payload);
    const udp = ip && ip.proto === 17 ? decodeUdp(ip.payload) : null;
    const data = udp ? udp.payload.toString() : '';
    const verdict = data.startsWith('DROP') ? 'drop' : data.startsWith('HOLD') ? 'hold' : 'accept';
    out({ id: p.id, hook: p.hook, src: ip?.src, sport: udp?.srcPort, dst: ip?.dst, dport: udp?.dstPort, data, verdict, at: Date.now() });
    if (verdict === 'hold') setTimeout(() => q.verdict(p.id, 'accept'), Number(holdMs));
    return verdict;
  });
} catch (err) {
  out({ error: (err as Error).message });
  process.exit(1);
}
out({ ready: true });

createInterface({ input: process.stdin })
  .on('line', (l) => {
    if (l === 'close') {
      reader.close();
      out({ closed: true });
    } else if (l === 'stats') out({ stats: reader.stats() });
  })
  .on('close', () => {
    reader.close();
    process.exit(0);
  });
