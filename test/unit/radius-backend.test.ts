// The RADIUS pass-through backend against a scripted RADIUS responder on loopback UDP:
// State echoed (RFC 2865 §5.24), retransmission byte-identical (same Identifier and
// Request Authenticator), forged responses discarded, MSK from MS-MPPE keys.
// (The real-peer proof is test/e2e/pcp-auth-radius-hostapd.test.ts.)
import t from 'tap';
import { createSocket } from 'node:dgram';
import {
  MICROSOFT_VENDOR_ID,
  MsAttr,
  RadiusAttr,
  RadiusCode,
  computeMessageAuthenticator,
  decodeRadius,
  eapFromAttributes,
  eapMessageAttributes,
  encodeRadius,
  encryptMppeKey,
  getAttr,
  responseAuthenticator,
  type RadiusAttribute,
} from '../../src/wire/radius.js';
import { RadiusBackend } from '../../src/pcp/auth/radius-backend.js';

const secret = Buffer.from('s3cret');

function reply(req: Buffer, code: number, attrs: RadiusAttribute[], sec = secret): Buffer {
  const q = decodeRadius(req)!;
  const out = encodeRadius({
    code,
    identifier: q.identifier,
    authenticator: q.authenticator,
    attributes: [...attrs, { type: RadiusAttr.MessageAuthenticator, value: Buffer.alloc(16) }],
  });
  computeMessageAuthenticator(out, sec, q.authenticator).copy(out, out.length - 16);
  responseAuthenticator(out, q.authenticator, sec).copy(out, 4);
  return out;
}

t.test('challenge, State, retransmission, accept with MPPE keys', async (t) => {
  const srv = createSocket('udp4');
  await new Promise<void>((r) => srv.bind(0, '127.0.0.1', () => r()));
  t.teardown(() => srv.close());
  const seen: Buffer[] = [];
  const msk = Buffer.from(Array.from({ length: 64 }, (_, i) => 255 - i));
  let dropFirstOfSecond = true;
  srv.on('message', (msg, rinfo) => {
    seen.push(msg);
    const q = decodeRadius(msg)!;
    const eap = eapFromAttributes(q.attributes)!;
    const send = (b: Buffer) => srv.send(b, rinfo.port, rinfo.address);
    if (eap[4] === 1) {
      // Response/Identity → a forged answer first (wrong secret), then the real Challenge.
      send(
        reply(
          msg,
          RadiusCode.AccessChallenge,
          [...eapMessageAttributes(Buffer.from([1, eap[1]! + 1, 0, 6, 13, 0x20]))],
          Buffer.from('forged'),
        ),
      );
      send(
        reply(msg, RadiusCode.AccessChallenge, [
          ...eapMessageAttributes(Buffer.from([1, eap[1]! + 1, 0, 6, 13, 0x20])),
          { type: RadiusAttr.State, value: Buffer.from('state-1') },
        ]),
      );
      return;
    }
    if (dropFirstOfSecond) {
      dropFirstOfSecond = false; // lose it: the backend must retransmit
      return;
    }
    t.same(getAttr(q, RadiusAttr.State), Buffer.from('state-1'), 'State echoed unmodified');
    const vsa = (type: number, key: Buffer) => {
      const enc = encryptMppeKey(key, secret, q.authenticator);
      const v = Buffer.alloc(6 + enc.length);
      v.writeUInt32BE(MICROSOFT_VENDOR_ID);
      v[4] = type;
      v[5] = 2 + enc.length;
      enc.copy(v, 6);
      return { type: RadiusAttr.VendorSpecific, value: v };
    };
    send(
      reply(msg, RadiusCode.AccessAccept, [
        ...eapMessageAttributes(Buffer.from([3, eap[1]!, 0, 4])),
        vsa(MsAttr.MppeRecvKey, msk.subarray(0, 32)),
        vsa(MsAttr.MppeSendKey, msk.subarray(32)),
      ]),
    );
  });
  const b = new RadiusBackend({ address: '127.0.0.1', port: srv.address().port, secret, timeout: 300, retries: 2 });
  t.teardown(() => b.close());
  const s = b.open();
  const first = s.firstRequest();
  t.equal(first[0], 1, 'the NAS sends Request/Identity itself');
  const s1 = await s.step(Buffer.from([2, first[1]!, 0, 10, 1, ...Buffer.from('alice')]));
  t.same(s1.eap, Buffer.from([1, first[1]! + 1, 0, 6, 13, 0x20]), 'EAP from the Access-Challenge (the forged one was discarded)');
  t.equal(b.stats.badResponses, 1, 'forged response counted and discarded');
  const s2 = await s.step(Buffer.from([2, first[1]! + 1, 0, 6, 13, 0]));
  t.ok(s2.outcome?.ok, 'Access-Accept');
  t.same(s2.outcome?.ok && s2.outcome.msk, msk, 'MSK = Recv-Key | Send-Key');
  t.equal(s2.eap![0], 3, 'EAP-Success relayed');
  t.equal(b.stats.retransmits, 1);
  t.ok(seen[1]!.equals(seen[2]!), 'the retransmission is byte-identical');
  t.equal(getAttr(decodeRadius(seen[0]!)!, RadiusAttr.UserName)!.toString(), 'alice', 'User-Name from Response/Identity');
});

t.test('no answer: the session fails after the retries', async (t) => {
  const sink = createSocket('udp4');
  await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
  t.teardown(() => sink.close());
  const b = new RadiusBackend({ address: '127.0.0.1', port: sink.address().port, secret, timeout: 100, retries: 1 });
  t.teardown(() => b.close());
  const s = b.open();
  const id = s.firstRequest()[1]!;
  const r = await s.step(Buffer.from([2, id, 0, 6, 1, 0x61]));
  t.equal(r.outcome?.ok, false);
  t.equal(r.eap![0], 4, 'EAP-Failure for the peer');
  t.equal(b.stats.timeouts, 1);
});
