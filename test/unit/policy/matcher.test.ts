import t from 'tap';
import { MultiMatcher } from '../../../src/policy/matcher.js';

const naive = (hay: Buffer, pats: { b: Buffer; ci: boolean; tag: number }[]) => {
  const found = new Set<number>();
  const low = Buffer.from(
    hay.toString('latin1').replace(/[A-Z]/g, (c) => c.toLowerCase()),
    'latin1',
  );
  for (const p of pats) {
    const needle = p.ci
      ? Buffer.from(
          p.b.toString('latin1').replace(/[A-Z]/g, (c) => c.toLowerCase()),
          'latin1',
        )
      : p.b;
    if ((p.ci ? low : hay).includes(needle)) found.add(p.tag);
  }
  return found;
};

t.test('finds overlapping and nested patterns, exact and case-insensitive', async (t) => {
  const m = new MultiMatcher([
    { bytes: Buffer.from('he'), caseInsensitive: false, tag: 'he' },
    { bytes: Buffer.from('she'), caseInsensitive: false, tag: 'she' },
    { bytes: Buffer.from('hers'), caseInsensitive: false, tag: 'hers' },
    { bytes: Buffer.from('PROJECT-NIGHTINGALE'), caseInsensitive: false, tag: 'ng' },
    { bytes: Buffer.from('Secret'), caseInsensitive: true, tag: 'secret' },
  ]);
  t.same([...m.match(Buffer.from('ushers'))].sort(), ['he', 'hers', 'she']);
  t.same([...m.match(Buffer.from('about project-nightingale'))], [], 'exact patterns are case-sensitive');
  t.same([...m.match(Buffer.from('xx PROJECT-NIGHTINGALE yy'))], ['ng']);
  t.same([...m.match(Buffer.from('top SECRET stuff'))], ['secret']);
  t.same([...m.match(Buffer.alloc(0))], []);
});

t.test('agrees with a naive search on random inputs', async (t) => {
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed);
  const alpha = 'abcAB';
  const word = (n: number) => Buffer.from(Array.from({ length: n }, () => alpha[rnd() % alpha.length]).join(''));
  for (let round = 0; round < 200; round++) {
    const pats = Array.from({ length: 1 + (rnd() % 8) }, (_, i) => ({ b: word(1 + (rnd() % 4)), ci: rnd() % 2 === 0, tag: i }));
    const m = new MultiMatcher(pats.map((p) => ({ bytes: p.b, caseInsensitive: p.ci, tag: p.tag })));
    const hay = word(rnd() % 40);
    t.same([...m.match(hay)].sort(), [...naive(hay, pats)].sort(), `round ${round}`);
  }
});
