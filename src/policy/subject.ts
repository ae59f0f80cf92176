import type { Subject } from './engine.js';
import type { InspectEvent } from '../inspect/events.js';

/**
 * What policy judges of an inspection event (contract.md "Rules": `contains` looks at
 * data-channel messages and DTLS application data; `file_type` at files; media selectors at
 * streams), or null for events policy does not judge. Shared by the live gateway and
 * `gatehouse inspect --rules`, so both decide alike.
 */
export function policySubject(e: InspectEvent, direction: 'to_peer' | 'from_peer'): Subject | null {
  switch (e.type) {
    case 'datachannel.message':
      return { kind: 'message', direction, label: e.label, data: e.data, size: e.size, sha256: e.sha256 };
    case 'file':
      return {
        kind: 'file',
        direction,
        label: e.label,
        data: e.data,
        size: e.size,
        sha256: e.sha256,
        fileType: e.fileType,
        ...(e.transfer ? { transfer: true } : {}),
        ...(e.inTransfer ? { inTransfer: true } : {}),
      };
    case 'appdata':
      return { kind: 'appdata', direction, data: e.data, size: e.size, sha256: e.sha256 };
    case 'rtp.stream':
      return { kind: 'media', direction, size: 0, codec: e.codec, ...(e.kind !== 'unknown' ? { mediaKind: e.kind } : {}) };
    default:
      return null;
  }
}
