/**
 * `node:zlib` for the browser bundle (the import map of `web/build.ts` points `node:zlib` here): the
 * functions `slide/` uses, over fflate. zlib streams (`inflateSync` / `deflateSync`), gzip and CRC-32 as
 * {@link https://www.rfc-editor.org/rfc/rfc1950 RFC 1950} / {@link https://www.rfc-editor.org/rfc/rfc1952 1952}.
 *
 * @module
 */
import { deflateSync as rawDeflate, gunzipSync as gunzip, unzlibSync, zlibSync } from "fflate";

/** A zlib stream's data (node's `inflateSync`). */
export function inflateSync(data: Uint8Array): Uint8Array {
  return unzlibSync(data);
}

/** A zlib stream of `data` (node's `deflateSync`; level 6 as node's default). */
export function deflateSync(data: Uint8Array, o: { level?: number } = {}): Uint8Array {
  return zlibSync(data, { level: (o.level ?? 6) as 6 });
}

/** Raw deflate (node's `deflateRawSync`). */
export function deflateRawSync(data: Uint8Array, o: { level?: number } = {}): Uint8Array {
  return rawDeflate(data, { level: (o.level ?? 6) as 6 });
}

/** A gzip member's data (node's `gunzipSync`). */
export function gunzipSync(data: Uint8Array): Uint8Array {
  return gunzip(data);
}

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO-HDLC, as zlib's `crc32`) of `data`, continuing from `value`. */
export function crc32(data: Uint8Array | string, value = 0): number {
  const b = typeof data === "string" ? new TextEncoder().encode(data) : data;
  let c = (value ^ 0xffffffff) >>> 0;
  for (let i = 0; i < b.length; i++) c = TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
