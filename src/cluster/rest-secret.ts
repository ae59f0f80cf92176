import { Redis } from 'ioredis';
import type { Logger } from '../util/log.js';
import { redactRedisUrl } from '../events/redis.js';

/**
 * One TURN REST secret for the whole cluster (store.redis, turn.rest_secret unset): the
 * credentials a conferencing core hands out (core.md §8; username `expiry:user`, password
 * base64(HMAC-SHA1(secret, username))) must verify on whichever gateway the client reaches.
 * At start the gateway offers its own secret with `SET <prefix>rest_secret <secret> NX`
 * and takes what Redis holds: the first gateway's secret becomes everyone's. A secret in
 * turn.rest_secret is used as it is (set the same on every gateway). Redis unreachable at
 * start: this gateway's own secret, said in the log (credentials of other gateways' cores
 * do not verify here until a restart with Redis).
 */
export async function clusterRestSecret(url: string, prefix: string, own: string, log: Logger, timeoutMs = 3000): Promise<string> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: timeoutMs });
  redis.on('error', () => {});
  try {
    const key = `${prefix}rest_secret`;
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timed out')), timeoutMs).unref());
    const secret = await Promise.race([
      (async () => {
        await redis.connect();
        await redis.set(key, own, 'NX');
        return redis.get(key);
      })(),
      timeout,
    ]);
    if (typeof secret === 'string' && secret.length >= 16) return secret;
    throw new Error('no usable secret in Redis');
  } catch (err) {
    log.warn(
      { redis: redactRedisUrl(url), err: (err as Error).message },
      "cluster: redis unavailable at start; using this gateway's own TURN REST secret",
    );
    return own;
  } finally {
    redis.disconnect();
  }
}
