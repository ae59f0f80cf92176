/** What an RTP payload's own bytes say of its codec (no SDP): pure, no state. */

/**
 * Strong per-packet codec signatures of a (decrypted) RTP payload, or null. Only
 * signatures that are unlikely by chance are used: keyframe / parameter-set markers.
 */
export function codecSignature(p: Buffer): string | null {
  if (p.length < 3) return null;
  // VP8 (RFC 7741 §4.2): X|R|N|S|R|PID; reserved bits 0x40 and 0x08 are zero.
  const b0 = p[0];
  if ((b0 & 0x48) === 0 && (b0 & 0x17) === 0x10) {
    // S=1 and PID=0: the VP8 payload header follows the descriptor.
    let q = 1;
    if (b0 & 0x80) {
      const x = p[q++];
      if (x & 0x0f)
        q = -1; // RSV bits must be zero
      else {
        if (x & 0x80) q += p[q] & 0x80 ? 2 : 1; // PictureID, 7 or 15 bits (M bit)
        if (x & 0x40) q += 1; // TL0PICIDX
        if (x & 0x30) q += 1; // TID/Y/KEYIDX
      }
    }
    // RFC 7741 §4.3 / RFC 6386 §9.1: P=0 marks a key frame, whose header carries the
    // start code 0x9d 0x01 0x2a after the 3-octet frame tag.
    if (q > 0 && q + 6 <= p.length && (p[q] & 0x01) === 0 && p[q + 3] === 0x9d && p[q + 4] === 0x01 && p[q + 5] === 0x2a) {
      return 'vp8';
    }
  }
  // H.264 (RFC 6184 §5.3): F=0; SPS (7) alone, first in a STAP-A (24, §5.7.1), or the
  // start of an FU-A (28, §5.8) carrying an IDR (5) or SPS.
  if ((b0 & 0x80) === 0) {
    const t = b0 & 0x1f;
    if (t === 7 && (b0 & 0x60) !== 0 && p.length >= 4 && p[1] <= 0xf4) return 'h264'; // profile_idc
    if (t === 24 && p.length >= 4) {
      const len = p.readUInt16BE(1);
      const inner = p[3];
      if (len > 0 && 3 + len <= p.length && (inner & 0x80) === 0 && (inner & 0x1f) === 7) return 'h264';
    }
    if (t === 28 && (p[1] & 0x80) !== 0 && (p[1] & 0x40) === 0 && ((p[1] & 0x1f) === 5 || (p[1] & 0x1f) === 7)) return 'h264';
  }
  // AV1 RTP payload (AOM av1-rtp-spec §4.4): aggregation header Z|Y|W|N|000, then an OBU
  // header (AV1 §5.3.2: forbidden bit 0, type, X, S, reserved 0). A new coded video
  // sequence (N=1) starts with a sequence header OBU (type 1).
  if ((b0 & 0x07) === 0 && (b0 & 0x08) !== 0 && (b0 & 0x80) === 0) {
    const w = (b0 >> 4) & 0x03;
    let q = 1;
    if (w !== 1) {
      // W=0 or >1: the first OBU element carries a LEB128 length.
      while (q < p.length && p[q] & 0x80 && q < 9) q++;
      q++;
    }
    if (q < p.length) {
      const h = p[q];
      if ((h & 0x81) === 0 && ((h >> 3) & 0x0f) === 1) return 'av1';
    }
  }
  // VP9 (RFC 9628 §4.2): I|P|L|F|B|E|V|Z; a key frame starts with B=1, P=0 and carries
  // the scalability structure (V=1, §4.2.1) whose resolutions (Y=1) must be plausible.
  if ((b0 & 0x4a) === 0x0a) {
    let q = 1;
    if (b0 & 0x80) q += p[q] & 0x80 ? 2 : 1; // PictureID, M bit selects 15 bits
    if (b0 & 0x20) q += b0 & 0x10 ? 1 : 2; // layer indices (+ TL0PICIDX in non-flexible mode)
    if (q < p.length) {
      const ss = p[q];
      const ns = (ss >> 5) + 1;
      if (ss & 0x10 && q + 1 + 4 * ns <= p.length) {
        let ok = true;
        for (let i = 0; i < ns; i++) {
          const w = p.readUInt16BE(q + 1 + 4 * i);
          const h = p.readUInt16BE(q + 3 + 4 * i);
          if (w === 0 || h === 0 || w > 16384 || h > 16384) ok = false;
        }
        if (ok) return 'vp9';
      }
    }
  }
  return null;
}
