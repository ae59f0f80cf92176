/**
 * File type detection by magic bytes, for the `file_type` policy condition
 * (contract.md: "file_type matches the magic bytes of a transferred file").
 *
 * `detectFileType(buf)` returns a short lowercase name or 'unknown'. Table-driven:
 * each entry checks a signature at a fixed offset; some entries refine further
 * (PE → exe/dll, ZIP → docx/xlsx/pptx/jar/apk/odt..., CFB → msi/doc/xls/ppt/ole,
 * RIFF → wav/webp/avi, ftyp → mp4/mov/..., EBML → webm/mkv, CAFEBABE → macho/class).
 *
 * Never throws; all reads are bounds-checked and scans are capped, so cost is bounded
 * regardless of the input (hostile offsets/counts are ignored).
 */

type Detector = (b: Buffer) => string | null;

/** Whether b holds sig at `at`: bytes, or a latin1 string compared by char code (no Buffer made per call). */
function startsWith(b: Buffer, sig: number[] | string, at = 0): boolean {
  if (b.length < at + sig.length) return false;
  if (typeof sig === 'string') {
    for (let i = 0; i < sig.length; i++) if (b[at + i] !== sig.charCodeAt(i)) return false;
  } else {
    for (let i = 0; i < sig.length; i++) if (b[at + i] !== sig[i]) return false;
  }
  return true;
}

function u16le(b: Buffer, o: number): number {
  return o >= 0 && o + 2 <= b.length ? b.readUInt16LE(o) : -1;
}
function u32le(b: Buffer, o: number): number {
  return o >= 0 && o + 4 <= b.length ? b.readUInt32LE(o) : -1;
}
function u32be(b: Buffer, o: number): number {
  return o >= 0 && o + 4 <= b.length ? b.readUInt32BE(o) : -1;
}

// --- PE (Microsoft PE/COFF spec: MS-DOS stub, e_lfanew at 0x3C, "PE\0\0"). --------
const IMAGE_FILE_DLL = 0x2000; // PE/COFF spec §3.3.2 Characteristics
function pe(b: Buffer): string | null {
  if (!startsWith(b, 'MZ') || b.length < 64) return null;
  const lfanew = u32le(b, 0x3c);
  if (lfanew >= 0x40 && lfanew + 24 <= b.length && startsWith(b, 'PE\0\0', lfanew)) {
    // COFF header after the signature: Machine(2) NumberOfSections(2) TimeDateStamp(4)
    // PointerToSymbolTable(4) NumberOfSymbols(4) SizeOfOptionalHeader(2) Characteristics(2)
    const ch = u16le(b, lfanew + 4 + 18);
    return ch >= 0 && (ch & IMAGE_FILE_DLL) !== 0 ? 'dll' : 'exe';
  }
  // No PE header: accept a plausible MS-DOS header only (e_cblp < 512, e_cp > 0,
  // e_cparhdr >= 4), so that text starting with "MZ" is not taken for a program.
  const cblp = u16le(b, 2);
  const cp = u16le(b, 4);
  const cparhdr = u16le(b, 8);
  return cblp < 512 && cp > 0 && cparhdr >= 4 ? 'exe' : null;
}

// --- Compound File Binary (MS-CFB §2.2 header, §2.6 directory entries). -------------
const CFB_MAGIC = [0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];
// Root entry CLSIDs (stored little-endian GUID layout) of well-known storage formats.
const CFB_CLSIDS: Array<[string, string]> = [
  ['000c1084-0000-0000-c000-000000000046', 'msi'], // Windows Installer package
  ['000c1086-0000-0000-c000-000000000046', 'msi'], // Windows Installer patch (.msp)
  ['000c1082-0000-0000-c000-000000000046', 'msi'], // Windows Installer transform (.mst)
  ['00020906-0000-0000-c000-000000000046', 'doc'], // Word 97-2003
  ['00020820-0000-0000-c000-000000000046', 'xls'], // Excel 97-2003
  ['00020810-0000-0000-c000-000000000046', 'xls'], // Excel 95
  ['64818d10-4f9b-11cf-86ea-00aa00b929e8', 'ppt'], // PowerPoint 97-2003
];
function guidFromLe(b: Buffer, o: number): string {
  const h = (s: number, e: number, rev: boolean) => {
    const part = Buffer.from(b.subarray(o + s, o + e));
    if (rev) part.reverse();
    return part.toString('hex');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`;
}
function cfb(b: Buffer): string | null {
  if (!startsWith(b, CFB_MAGIC)) return null;
  // MS-CFB §2.2: Sector Shift at 0x1E (9 → 512, 12 → 4096); First Directory Sector at 0x30.
  const shift = u16le(b, 0x1e);
  if (shift !== 9 && shift !== 12) return 'ole';
  const sector = 1 << shift;
  const dirSec = u32le(b, 0x30);
  if (dirSec < 0 || dirSec >= 0xfffffffa) return 'ole';
  const rootOff = (dirSec + 1) * sector; // sector n starts at (n + 1) * sector size
  // MS-CFB §2.6.1: entry name (64), name len (2), type (1: 5 = root storage), ..., CLSID at 0x50.
  if (rootOff + 128 > b.length || b[rootOff + 0x42] !== 5) return 'ole';
  const clsid = guidFromLe(b, rootOff + 0x50);
  for (const [id, name] of CFB_CLSIDS) if (id === clsid) return name;
  return 'ole';
}

// --- ZIP (PKWARE APPNOTE §4.3: local header PK\3\4, central dir PK\1\2, EOCD PK\5\6). --
const MAX_ZIP_NAMES = 4096;
function zipNames(b: Buffer): string[] {
  const names: string[] = [];
  // Prefer the central directory (APPNOTE §4.3.16 EOCD within the last 64 KiB + 22).
  const lo = Math.max(0, b.length - 0xffff - 22);
  for (let i = b.length - 22; i >= lo; i--) {
    if (b[i] === 0x50 && b[i + 1] === 0x4b && b[i + 2] === 0x05 && b[i + 3] === 0x06) {
      const count = b.readUInt16LE(i + 10);
      let p = u32le(b, i + 16);
      for (let k = 0; k < count && k < MAX_ZIP_NAMES && p >= 0 && p + 46 <= b.length; k++) {
        if (u32le(b, p) !== 0x02014b50) break;
        const n = b.readUInt16LE(p + 28);
        const e = b.readUInt16LE(p + 30);
        const c = b.readUInt16LE(p + 32);
        if (p + 46 + n > b.length) break;
        names.push(b.toString('latin1', p + 46, p + 46 + n));
        p += 46 + n + e + c;
      }
      break;
    }
  }
  if (names.length > 0) return names;
  // Fallback: walk local file headers (APPNOTE §4.3.7) while sizes are known.
  let p = 0;
  for (let k = 0; k < MAX_ZIP_NAMES && p + 30 <= b.length && u32le(b, p) === 0x04034b50; k++) {
    const flags = b.readUInt16LE(p + 6);
    const csize = b.readUInt32LE(p + 18);
    const n = b.readUInt16LE(p + 26);
    const e = b.readUInt16LE(p + 28);
    if (p + 30 + n > b.length) break;
    names.push(b.toString('latin1', p + 30, p + 30 + n));
    if (flags & 0x08) break; // sizes in a data descriptor: cannot skip reliably
    p += 30 + n + e + csize;
  }
  return names;
}
function zip(b: Buffer): string | null {
  if (!startsWith(b, [0x50, 0x4b, 0x03, 0x04])) return null;
  // OpenDocument / EPUB: first entry "mimetype" stored uncompressed (ODF 1.2 §3.3).
  if (u16le(b, 8) === 0 && b.length >= 38 && b.toString('latin1', 30, 38) === 'mimetype') {
    const n = b.readUInt16LE(26);
    const e = b.readUInt16LE(28);
    const mt = b.toString('latin1', 30 + n + e, Math.min(b.length, 30 + n + e + 80));
    if (mt.startsWith('application/vnd.oasis.opendocument.text')) return 'odt';
    if (mt.startsWith('application/vnd.oasis.opendocument.spreadsheet')) return 'ods';
    if (mt.startsWith('application/vnd.oasis.opendocument.presentation')) return 'odp';
    if (mt.startsWith('application/epub+zip')) return 'epub';
  }
  const names = zipNames(b);
  const has = (n: string) => names.includes(n);
  const prefix = (p: string) => names.some((n) => n.startsWith(p));
  if (has('[Content_Types].xml')) {
    // ECMA-376 Part 2 (OPC): main part folders.
    if (prefix('word/')) return 'docx';
    if (prefix('xl/')) return 'xlsx';
    if (prefix('ppt/')) return 'pptx';
  }
  if (has('AndroidManifest.xml') && (has('classes.dex') || prefix('META-INF/') || prefix('res/'))) return 'apk';
  if (has('META-INF/MANIFEST.MF')) return 'jar';
  return 'zip';
}

// --- Other refinements. ----------------------------------------------------------
function riff(b: Buffer): string | null {
  if (!startsWith(b, 'RIFF') || b.length < 12) return null;
  const form = b.toString('latin1', 8, 12);
  if (form === 'WAVE') return 'wav';
  if (form === 'WEBP') return 'webp';
  if (form === 'AVI ') return 'avi';
  return 'riff';
}

// ISO/IEC 14496-12 §4.3 File Type Box: size(4) 'ftyp' major_brand(4).
function ftyp(b: Buffer): string | null {
  if (!startsWith(b, 'ftyp', 4) || b.length < 12) return null;
  const brand = b.toString('latin1', 8, 12);
  if (brand === 'qt  ') return 'mov';
  if (brand === 'heic' || brand === 'heix' || brand === 'mif1') return 'heic';
  if (brand === 'avif') return 'avif';
  if (brand.startsWith('3g')) return '3gp';
  if (brand === 'M4A ' || brand === 'M4B ') return 'm4a';
  return 'mp4';
}
// Old QuickTime files may start with other atoms.
function qtAtoms(b: Buffer): string | null {
  if (b.length < 8 || u32be(b, 0) < 8) return null;
  return startsWith(b, 'moov', 4) || startsWith(b, 'mdat', 4) || startsWith(b, 'wide', 4) || startsWith(b, 'free', 4) ? 'mov' : null;
}

// Matroska/WebM: EBML header, DocType element (0x4282) says "webm" or "matroska".
function ebml(b: Buffer): string | null {
  if (!startsWith(b, [0x1a, 0x45, 0xdf, 0xa3])) return null;
  const head = b.subarray(0, Math.min(b.length, 64));
  const i = head.indexOf(Buffer.from([0x42, 0x82]));
  if (i >= 0) {
    const rest = head.toString('latin1', i + 3, Math.min(head.length, i + 3 + 8));
    if (rest.startsWith('webm')) return 'webm';
    if (rest.startsWith('matroska')) return 'mkv';
  }
  return 'mkv';
}

// Mach-O (mach-o/loader.h, mach-o/fat.h) vs Java class (JVMS §4.1), both may be CAFEBABE.
function machoOrClass(b: Buffer): string | null {
  const m = u32be(b, 0);
  if (m === 0xfeedface || m === 0xfeedfacf || m === 0xcefaedfe || m === 0xcffaedfe) return 'macho';
  if (m === 0xcafebabe || m === 0xcafebabf) {
    const n = u32be(b, 4);
    if (n < 0) return null;
    // fat_header.nfat_arch is small; a class file has minor(2)=0.. major(2) >= 45 here.
    if (n > 0 && n < 45) return 'macho';
    if ((n & 0xffff) >= 45) return 'class';
  }
  return null;
}

// MP3: ID3v2 tag or an MPEG audio Layer III frame header (ISO/IEC 11172-3 §2.4.1.3).
function mp3(b: Buffer): string | null {
  if (startsWith(b, 'ID3') && b.length >= 10 && b[3]! < 0x05) return 'mp3';
  if (b.length < 4 || b[0] !== 0xff || (b[1]! & 0xe0) !== 0xe0) return null;
  const version = (b[1]! >> 3) & 3; // 00 MPEG2.5, 01 reserved, 10 MPEG2, 11 MPEG1
  const layer = (b[1]! >> 1) & 3; // 01 = Layer III
  const bitrate = b[2]! >> 4;
  const rate = (b[2]! >> 2) & 3;
  if (version === 1 || layer !== 1 || bitrate === 0 || bitrate === 15 || rate === 3) return null;
  return 'mp3';
}

function bmp(b: Buffer): string | null {
  if (!startsWith(b, 'BM') || b.length < 18) return null;
  // BITMAPINFOHEADER family sizes (Windows GDI): 12, 40, 52, 56, 64, 108, 124.
  const dib = u32le(b, 14);
  return [12, 40, 52, 56, 64, 108, 124].includes(dib) ? 'bmp' : null;
}

function tar(b: Buffer): string | null {
  // POSIX.1-1988 ustar header: magic "ustar" at offset 257.
  return startsWith(b, 'ustar', 257) ? 'tar' : null;
}

function sig(type: string, bytes: number[] | string, at = 0): Detector {
  return (b) => (startsWith(b, bytes, at) ? type : null);
}

/** Order matters: more specific signatures first. */
const DETECTORS: Detector[] = [
  pe,
  sig('elf', [0x7f, 0x45, 0x4c, 0x46]),
  machoOrClass,
  cfb,
  zip,
  sig('pdf', '%PDF-'),
  sig('png', [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  sig('jpeg', [0xff, 0xd8, 0xff]),
  sig('gif', 'GIF87a'),
  sig('gif', 'GIF89a'),
  riff,
  bmp,
  sig('tiff', [0x49, 0x49, 0x2a, 0x00]),
  sig('tiff', [0x4d, 0x4d, 0x00, 0x2a]),
  ftyp,
  ebml,
  sig('ogg', 'OggS'),
  sig('flac', 'fLaC'),
  sig('gzip', [0x1f, 0x8b, 0x08]),
  sig('7z', [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c]),
  sig('rar', [0x52, 0x61, 0x72, 0x21, 0x1a, 0x07, 0x00]),
  sig('rar', [0x52, 0x61, 0x72, 0x21, 0x1a, 0x07, 0x01, 0x00]),
  sig('xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
  sig('bzip2', 'BZh'),
  sig('zstd', [0x28, 0xb5, 0x2f, 0xfd]),
  sig('wasm', [0x00, 0x61, 0x73, 0x6d]),
  sig('dex', 'dex\n'),
  tar,
  sig('script', '#!'),
  mp3,
  qtAtoms,
];

/** Detects the file type of buf by magic bytes; 'unknown' when nothing matches. */
export function detectFileType(buf: Buffer): string {
  if (buf.length < 2) return 'unknown';
  for (const d of DETECTORS) {
    try {
      const r = d(buf);
      if (r) return r;
    } catch {
      // Defensive: detectors are bounds-checked, but never let one throw out.
    }
  }
  return 'unknown';
}

/** Types considered executable code (useful defaults for policy). */
export const EXECUTABLE_TYPES: ReadonlySet<string> = new Set([
  'exe',
  'dll',
  'elf',
  'macho',
  'msi',
  'class',
  'jar',
  'apk',
  'dex',
  'script',
  'wasm',
]);
