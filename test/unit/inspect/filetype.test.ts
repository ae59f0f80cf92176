// detectFileType on real files generated at test time (ffmpeg, tar, node's own ELF
// binary, zlib) and on hand-built headers for formats no Debian tool writes (PE, Mach-O,
// CFB/MSI, 7z, RAR). ZIP-family files are built with a small stored-ZIP writer.
import t from 'tap';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, gzipSync } from 'node:zlib';
import { detectFileType } from '../../../src/inspect/filetype.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-filetype-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** Minimal ZIP writer (APPNOTE 6.3: local headers, central directory, EOCD), stored. */
function makeZip(entries: Array<[string, Buffer | string]>, dataDescriptor = false): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let off = 0;
  for (const [name, body] of entries) {
    const data = Buffer.isBuffer(body) ? body : Buffer.from(body);
    const nm = Buffer.from(name);
    const crc = crc32(data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(dataDescriptor ? 0x08 : 0, 6);
    lh.writeUInt32LE(dataDescriptor ? 0 : crc, 14);
    lh.writeUInt32LE(dataDescriptor ? 0 : data.length, 18);
    lh.writeUInt32LE(dataDescriptor ? 0 : data.length, 22);
    lh.writeUInt16LE(nm.length, 26);
    const dd = dataDescriptor ? Buffer.alloc(16) : Buffer.alloc(0);
    if (dataDescriptor) {
      dd.writeUInt32LE(0x08074b50, 0);
      dd.writeUInt32LE(crc, 4);
      dd.writeUInt32LE(data.length, 8);
      dd.writeUInt32LE(data.length, 12);
    }
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt16LE(dataDescriptor ? 0x08 : 0, 8);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(data.length, 20);
    ch.writeUInt32LE(data.length, 24);
    ch.writeUInt16LE(nm.length, 28);
    ch.writeUInt32LE(off, 42);
    const local = Buffer.concat([lh, nm, data, dd]);
    locals.push(local);
    centrals.push(Buffer.concat([ch, nm]));
    off += local.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(off, 16);
  return Buffer.concat([...locals, cd, eocd]);
}

function pe(dll: boolean): Buffer {
  const b = Buffer.alloc(512);
  b.write('MZ', 0, 'latin1');
  b.writeUInt16LE(0x90, 2); // e_cblp
  b.writeUInt16LE(3, 4); // e_cp
  b.writeUInt16LE(4, 8); // e_cparhdr
  b.writeUInt32LE(0x80, 0x3c); // e_lfanew
  b.write('PE\0\0', 0x80, 'latin1');
  b.writeUInt16LE(0x8664, 0x84); // Machine x64
  b.writeUInt16LE(1, 0x86); // sections
  b.writeUInt16LE(0xf0, 0x94); // SizeOfOptionalHeader
  b.writeUInt16LE(dll ? 0x2022 : 0x0022, 0x96); // Characteristics (0x2000 = DLL)
  return b;
}

/** MS-CFB header (v3, 512-byte sectors) with the directory in sector 0, root CLSID set. */
function cfb(clsid: string): Buffer {
  const b = Buffer.alloc(1024);
  Buffer.from('d0cf11e0a1b11ae1', 'hex').copy(b, 0);
  b.writeUInt16LE(0x3e, 0x18); // minor version
  b.writeUInt16LE(3, 0x1a); // major version 3
  b.writeUInt16LE(0xfffe, 0x1c); // byte order
  b.writeUInt16LE(9, 0x1e); // sector shift
  b.writeUInt16LE(6, 0x20); // mini sector shift
  b.writeUInt32LE(0, 0x30); // first directory sector
  const root = 512;
  Buffer.from('Root Entry\0', 'utf16le').copy(b, root);
  b.writeUInt16LE(22, root + 0x40);
  b[root + 0x42] = 5; // root storage
  const [d1, d2, d3, d4, d5] = clsid.split('-');
  const g = Buffer.alloc(16);
  g.writeUInt32LE(parseInt(d1!, 16), 0);
  g.writeUInt16LE(parseInt(d2!, 16), 4);
  g.writeUInt16LE(parseInt(d3!, 16), 6);
  Buffer.from(d4! + d5!, 'hex').copy(g, 8);
  g.copy(b, root + 0x50);
  return b;
}

t.test('hand-built headers', async (t) => {
  t.equal(detectFileType(pe(false)), 'exe');
  t.equal(detectFileType(pe(true)), 'dll');
  const dos = pe(false);
  dos.fill(0, 0x80, 0x84); // no PE signature: plausible DOS header still an exe
  t.equal(detectFileType(dos), 'exe');
  t.equal(detectFileType(Buffer.from('MZ is a chat message that begins with these two letters, long enough.')), 'unknown');
  const mach = (hex: string) => Buffer.concat([Buffer.from(hex, 'hex'), Buffer.alloc(28)]);
  for (const m of ['feedface', 'feedfacf', 'cefaedfe', 'cffaedfe']) t.equal(detectFileType(mach(m)), 'macho', m);
  t.equal(detectFileType(mach('cafebabe00000002')), 'macho', 'fat binary');
  t.equal(detectFileType(mach('cafebabe00000041')), 'class', 'Java class (major 65)');
  t.equal(detectFileType(cfb('000c1084-0000-0000-c000-000000000046')), 'msi');
  t.equal(detectFileType(cfb('00020906-0000-0000-c000-000000000046')), 'doc');
  t.equal(detectFileType(cfb('12345678-0000-0000-0000-000000000000')), 'ole');
  t.equal(detectFileType(cfb('000c1084-0000-0000-c000-000000000046').subarray(0, 512)), 'ole', 'directory not present');
  t.equal(detectFileType(Buffer.from('%PDF-1.4\n%\xe2\xe3\n', 'latin1')), 'pdf');
  t.equal(detectFileType(Buffer.from('377abcaf271c0004', 'hex')), '7z');
  t.equal(detectFileType(Buffer.from('526172211a070100', 'hex')), 'rar');
  t.equal(detectFileType(Buffer.from('526172211a0700cf', 'hex')), 'rar');
  t.equal(detectFileType(Buffer.from('#!/bin/sh\necho hi\n')), 'script');
  t.equal(detectFileType(Buffer.from('0061736d01000000', 'hex')), 'wasm');
  t.equal(detectFileType(Buffer.from('hello world')), 'unknown');
  t.equal(detectFileType(Buffer.alloc(0)), 'unknown');
  t.equal(detectFileType(Buffer.from([0xff])), 'unknown');
  t.equal(detectFileType(Buffer.from([0xff, 0xf1, 0x50, 0x80])), 'unknown', 'AAC ADTS is not MP3');
});

t.test('ZIP family', async (t) => {
  const ct = '<?xml version="1.0"?><Types/>';
  t.equal(
    detectFileType(
      makeZip([
        ['a.txt', 'x'],
        ['b/c.txt', 'y'],
      ]),
    ),
    'zip',
  );
  t.equal(
    detectFileType(
      makeZip([
        ['[Content_Types].xml', ct],
        ['_rels/.rels', ''],
        ['word/document.xml', '<w/>'],
      ]),
    ),
    'docx',
  );
  t.equal(
    detectFileType(
      makeZip([
        ['[Content_Types].xml', ct],
        ['xl/workbook.xml', '<x/>'],
      ]),
    ),
    'xlsx',
  );
  t.equal(
    detectFileType(
      makeZip([
        ['[Content_Types].xml', ct],
        ['ppt/presentation.xml', '<p/>'],
      ]),
    ),
    'pptx',
  );
  t.equal(
    detectFileType(
      makeZip([
        ['META-INF/MANIFEST.MF', 'Manifest-Version: 1.0\n'],
        ['a/B.class', 'x'],
      ]),
    ),
    'jar',
  );
  t.equal(
    detectFileType(
      makeZip([
        ['AndroidManifest.xml', 'x'],
        ['classes.dex', 'dex\n035\0'],
        ['META-INF/MANIFEST.MF', 'x'],
      ]),
    ),
    'apk',
  );
  t.equal(
    detectFileType(
      makeZip([
        ['mimetype', 'application/vnd.oasis.opendocument.text'],
        ['content.xml', '<x/>'],
      ]),
    ),
    'odt',
  );
  // Data-descriptor entries and no central directory (truncated transfer): local walk.
  const dd = makeZip(
    [
      ['[Content_Types].xml', ct],
      ['word/document.xml', '<w/>'],
    ],
    true,
  );
  t.equal(detectFileType(dd), 'docx', 'central directory used');
  const noCd = makeZip([
    ['META-INF/MANIFEST.MF', 'x'],
    ['z', 'y'],
  ]);
  t.equal(detectFileType(noCd.subarray(0, noCd.indexOf(Buffer.from('PK\x01\x02', 'latin1')))), 'jar', 'local headers only');
  // Hostile central directory offsets/counts do not throw.
  const hostile = makeZip([['a', 'b']]);
  hostile.writeUInt32LE(0xfffffff0, hostile.length - 6);
  hostile.writeUInt16LE(0xffff, hostile.length - 12);
  t.equal(detectFileType(hostile), 'zip');
  // Real jar tool output when available.
  if (spawnSync('jar', ['--version']).status === 0) {
    mkdirSync(join(dir, 'j'));
    writeFileSync(join(dir, 'j', 'A.txt'), 'x');
    execFileSync('jar', ['cf', join(dir, 'a.jar'), '-C', join(dir, 'j'), '.']);
    t.equal(detectFileType(readFileSync(join(dir, 'a.jar'))), 'jar', 'jar tool');
  }
});

t.test('real binaries and archives from the machine', async (t) => {
  t.equal(detectFileType(readFileSync(process.execPath).subarray(0, 4096)), 'elf', 'node binary');
  t.equal(detectFileType(gzipSync(Buffer.from('x'))), 'gzip');
  writeFileSync(join(dir, 'f.txt'), 'tar me');
  execFileSync('tar', ['-cf', join(dir, 'a.tar'), '-C', dir, 'f.txt']);
  t.equal(detectFileType(readFileSync(join(dir, 'a.tar'))), 'tar');
  for (const [tool, args, want] of [
    ['xz', ['-k', '-f'], 'xz'],
    ['bzip2', ['-k', '-f'], 'bzip2'],
    ['zstd', ['-q', '-k', '-f'], 'zstd'],
  ] as const) {
    if (spawnSync(tool, ['--version']).error) continue;
    execFileSync(tool, [...args, join(dir, 'f.txt')]);
    const ext = tool === 'xz' ? 'xz' : tool === 'bzip2' ? 'bz2' : 'zst';
    t.equal(detectFileType(readFileSync(join(dir, `f.txt.${ext}`))), want, tool);
  }
});

// A real peer: missing in CI (which installs ffmpeg) is a failure, not a skip.
t.test('media generated by ffmpeg', { skip: peerSkip(t, 'ffmpeg') }, async (t) => {
  const V = ['-f', 'lavfi', '-i', 'testsrc=size=32x32:rate=5'];
  const A = ['-f', 'lavfi', '-i', 'sine=frequency=440:duration=0.3'];
  const cases: Array<[string, string[], string]> = [
    ['a.png', [...V, '-frames:v', '1'], 'png'],
    ['a.jpg', [...V, '-frames:v', '1'], 'jpeg'],
    ['a.gif', [...V, '-frames:v', '1'], 'gif'],
    ['a.bmp', [...V, '-frames:v', '1'], 'bmp'],
    ['a.tiff', [...V, '-frames:v', '1'], 'tiff'],
    ['a.webp', [...V, '-frames:v', '1'], 'webp'],
    ['a.mp4', [...V, '-t', '0.4', '-c:v', 'mpeg4'], 'mp4'],
    ['a.mov', [...V, '-t', '0.4', '-c:v', 'mpeg4'], 'mov'],
    ['a.mkv', [...V, '-t', '0.4', '-c:v', 'mpeg4'], 'mkv'],
    ['a.webm', [...V, '-t', '0.4', '-c:v', 'libvpx', '-b:v', '50k'], 'webm'],
    ['a.avi', [...V, '-t', '0.4', '-c:v', 'mpeg4'], 'avi'],
    ['a.wav', [...A], 'wav'],
    ['a.ogg', [...A, '-c:a', 'libvorbis'], 'ogg'],
    ['a.opus', [...A, '-c:a', 'libopus'], 'ogg'],
    ['a.flac', [...A], 'flac'],
    ['a.mp3', [...A, '-c:a', 'libmp3lame'], 'mp3'],
    ['b.mp3', [...A, '-c:a', 'libmp3lame', '-id3v2_version', '0', '-write_xing', '0'], 'mp3'],
  ];
  for (const [name, args, want] of cases) {
    const out = join(dir, name);
    const r = spawnSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...args, out], { timeout: 60000 });
    if (r.status !== 0) {
      t.comment(`ffmpeg could not write ${name}: ${r.stderr?.toString().trim().split('\n').pop()}`);
      continue;
    }
    const buf = readFileSync(out);
    t.equal(detectFileType(buf), want, name);
    if (name === 'b.mp3') t.notOk(buf.subarray(0, 3).toString('latin1') === 'ID3', 'b.mp3 starts with a frame header');
  }
});
