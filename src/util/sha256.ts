import * as nodeCrypto from 'node:crypto';

/** crypto.hash (node >= 20.12): one call, no Hash object; createHash on older nodes. */
const oneShotHash = (nodeCrypto as { hash?: (alg: string, data: Buffer | string, enc: 'hex') => string }).hash;

/** SHA-256 (FIPS 180-4) of a buffer, hex. The packet path hashes every message: no Hash object. */
export function sha256Hex(b: Buffer | string): string {
  return oneShotHash ? oneShotHash('sha256', b, 'hex') : nodeCrypto.createHash('sha256').update(b).digest('hex');
}
