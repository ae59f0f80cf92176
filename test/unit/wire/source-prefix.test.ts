import t from 'tap';
import { sourcePrefix } from '../../../src/wire/source-prefix.js';

t.test('IPv4 sources count alone, IPv6 sources by /64 (RFC 4291 §2.5.4)', async (t) => {
  t.equal(sourcePrefix('192.0.2.7'), '192.0.2.7');
  t.equal(sourcePrefix('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  t.equal(sourcePrefix('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64', 'another interface id, same key');
  t.equal(sourcePrefix('2001:0db8:0001:0002::9'), '2001:db8:1:2::/64', 'leading zeros normalised');
  t.not(sourcePrefix('2001:db8:1:3::1'), sourcePrefix('2001:db8:1:2::1'), 'the next /64 is another source');
  t.equal(sourcePrefix('::1'), '0:0:0:0::/64');
  t.equal(sourcePrefix('::ffff:198.51.100.4'), '198.51.100.4', 'IPv4-mapped is the IPv4 source');
  t.equal(sourcePrefix('fe80::1%eth0'), 'fe80:0:0:0::/64', 'zone dropped');
  t.equal(sourcePrefix('not-an-ip'), 'not-an-ip', 'anything else unchanged');
});
