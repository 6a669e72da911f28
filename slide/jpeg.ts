/**
 * Baseline JPEG streams for slides: a structural check that finds truncation before `jpeg-js` papers over
 * it, splicing TIFF JPEGTables (tag 347) into abbreviated tile streams, and decoding to RGB with or without
 * the YCbCr → RGB conversion.
 *
 * Specs: {@link https://www.w3.org/Graphics/JPEG/itu-t81.pdf ITU-T T.81} (B.1 marker segments, B.1.1.5
 * entropy-coded data: 0xFF is followed by a stuffed 0x00 or an RSTn), Adobe's
 * {@link https://www.awaresystems.be/imaging/tiff/specification/TIFFphotoshop.pdf TIFF Technical Note 2}
 * (JPEGTables holds an abbreviated table-specification stream: SOI, DQT/DHT, EOI).
 *
 * NOTE: jpeg-js (0.4.4) reads past the end of a truncated scan as zero bits and, with its default
 * `tolerantDecoding`, returns a half-grey image; {@linkcode checkJpeg} is what turns that into an error.
 *
 * @module
 */
import jpeg from "jpeg-js";
import { SlideError } from "./tiff.ts";

/** Frame facts from the SOF marker. */
export interface JpegInfo {
  width: number;
  height: number;
  components: number;
  /** Whether the stream carries an Adobe APP14 or JFIF APP0 (these decide colour handling in jpeg-js). */
  adobe: boolean;
}

/**
 * Walk the markers of a complete JPEG stream (SOI … EOI), skipping entropy-coded data, and return the
 * frame size. Throws a {@linkcode SlideError} naming `where` and the byte offset (`base` + position) when a
 * segment runs past the end or the EOI marker is missing.
 */
export function checkJpeg(b: Uint8Array, where: string, base = 0): JpegInfo {
  const at = (p: number) => `byte offset ${base + p}`;
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) {
    throw new SlideError(`Cannot decode ${where}: expected a JPEG SOI marker (FF D8) at ${at(0)}`);
  }
  let p = 2;
  let info: JpegInfo | null = null;
  let adobe = false;
  while (true) {
    if (p + 2 > b.length) {
      throw new SlideError(
        `Cannot decode ${where}: the JPEG stream ends at ${at(b.length)} without an EOI marker (truncated)`,
      );
    }
    if (b[p] !== 0xff) {
      throw new SlideError(`Cannot decode ${where}: expected a JPEG marker at ${at(p)}, found ${b[p]}`);
    }
    const m = b[p + 1];
    if (m === 0xff) { // fill byte
      p++;
      continue;
    }
    if (m === 0xd9) break; // EOI
    if (m === 0xd8 || (m >= 0xd0 && m <= 0xd7) || m === 0x01) {
      p += 2;
      continue;
    }
    if (p + 4 > b.length) {
      throw new SlideError(
        `Cannot decode ${where}: JPEG marker FF ${hex(m)} at ${at(p)} is cut off (truncated)`,
      );
    }
    const len = (b[p + 2] << 8) | b[p + 3];
    if (p + 2 + len > b.length) {
      throw new SlideError(
        `Cannot decode ${where}: JPEG segment FF ${hex(m)} at ${at(p)} needs ${len} bytes, ` +
          `the stream ends at ${at(b.length)} (truncated)`,
      );
    }
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      if (m !== 0xc0 && m !== 0xc1 && m !== 0xc2) {
        throw new SlideError(`Cannot decode ${where}: JPEG SOF${m - 0xc0} (lossless/arithmetic) at ${at(p)}`);
      }
      info = {
        height: (b[p + 5] << 8) | b[p + 6],
        width: (b[p + 7] << 8) | b[p + 8],
        components: b[p + 9],
        adobe,
      };
    }
    if (m === 0xee || m === 0xe0) adobe = true;
    p += 2 + len;
    if (m === 0xda) {
      // Entropy-coded data: runs to the next marker that is not a stuffed 0x00 or an RSTn.
      while (p + 1 < b.length && !(b[p] === 0xff && b[p + 1] !== 0 && (b[p + 1] < 0xd0 || b[p + 1] > 0xd7))) {
        p++;
      }
      if (p + 1 >= b.length) {
        throw new SlideError(
          `Cannot decode ${where}: the JPEG scan data run to the end of the stream at ${at(b.length)} ` +
            `without an EOI marker (truncated)`,
        );
      }
    }
  }
  if (!info) throw new SlideError(`Cannot decode ${where}: the JPEG stream has no SOF marker`);
  info.adobe = adobe;
  return info;
}

function hex(m: number): string {
  return m.toString(16).toUpperCase().padStart(2, "0");
}

/**
 * Put the tables of a JPEGTables stream (SOI, DQT/DHT…, EOI) in front of an abbreviated tile stream
 * (SOI, SOF, SOS…, EOI): `tables` without its EOI, then the tile without its SOI.
 */
export function spliceTables(tables: Uint8Array | undefined, tile: Uint8Array): Uint8Array {
  if (!tables || tables.length <= 4 || tile.length < 2) return tile;
  const out = new Uint8Array(tables.length - 2 + tile.length - 2);
  out.set(tables.subarray(0, tables.length - 2));
  out.set(tile.subarray(2), tables.length - 2);
  return out;
}

/**
 * Decode a checked JPEG stream to interleaved RGB. `colorTransform: false` keeps the three components as
 * they are (TIFF Photometric = RGB, e.g. Aperio SVS); true converts YCbCr → RGB; undefined lets jpeg-js
 * decide (JFIF/unmarked 3-component streams are YCbCr).
 */
export function decodeJpegRgb(
  b: Uint8Array,
  where: string,
  opts: { colorTransform?: boolean; base?: number } = {},
): { width: number; height: number; data: Uint8Array } {
  const info = checkJpeg(b, where, opts.base ?? 0);
  if (info.components !== 1 && info.components !== 3) {
    throw new SlideError(`Cannot decode ${where}: JPEG with ${info.components} components is not supported`);
  }
  // jpeg-js counts its planes (2 bytes per sample, padded to 8 × 8 blocks) and outputs against this cap.
  const mp = info.width * info.height / 1e6;
  try {
    const img = jpeg.decode(b, {
      useTArray: true,
      formatAsRGBA: false,
      tolerantDecoding: false,
      colorTransform: opts.colorTransform,
      maxResolutionInMP: Math.max(100, Math.ceil(mp) + 1),
      maxMemoryUsageInMB: Math.max(512, Math.ceil(mp * 24) + 256),
    });
    return { width: img.width, height: img.height, data: img.data };
  } catch (e) {
    throw new SlideError(`Cannot decode ${where}: jpeg-js: ${(e as Error).message}`);
  }
}
