/**
 * A small TIFF / BigTIFF reader over positioned reads: the IFD chain, tag values, and the lossless strip /
 * tile codecs (none, LZW, deflate, PackBits, horizontal predictor). JPEG tiles go through `./jpeg.ts`.
 *
 * Specs: {@link https://www.itu.int/itudoc/itu-t/com16/tiff-fx/docs/tiff6.pdf TIFF 6.0} (§2 structure,
 * §13 LZW, §14 predictor, §9 PackBits), {@link https://www.awaresystems.be/imaging/tiff/bigtiff.html BigTIFF}
 * (8-byte offsets, 20-byte entries), Adobe's TIFF Technical Note 2 (deflate = compression 8).
 *
 * Nothing here reads the whole file: {@linkcode openFileSource} reads the byte ranges asked for, so a
 * multi-gigabyte slide costs its IFDs plus the tiles a region touches.
 *
 * @module
 */
import { inflateSync } from "node:zlib";

/** Thrown for a slide that cannot be read; the message names the file and, where known, the byte offset. */
export class SlideError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SlideError";
  }
}

/** Random access to a file's bytes. Reads are serialised (one seek + read at a time). */
export interface ByteSource {
  /** The file name, for errors. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** `length` bytes from `offset`; throws a {@linkcode SlideError} naming the offset if they are not all there. */
  read(offset: number, length: number, what: string): Promise<Uint8Array>;
  close(): void;
}

/** A {@linkcode ByteSource} over an open file: `Deno.open` + seek/read, serialised through a promise chain. */
export async function openFileSource(path: string): Promise<ByteSource> {
  let file: Deno.FsFile, size: number;
  try {
    if ((await Deno.stat(path)).isDirectory) {
      throw new SlideError(`Cannot open ${path}: it is a folder, not a file`);
    }
    file = await Deno.open(path, { read: true });
    size = (await file.stat()).size;
  } catch (e) {
    if (e instanceof SlideError) throw e;
    // Deno's message ends with the call and path ("… (os error 2): stat 'x'"); the path is said once.
    throw new SlideError(`Cannot open ${path}: ${(e as Error).message.replace(/: \w+ '.*'$/, "")}`);
  }
  let queue: Promise<unknown> = Promise.resolve();
  const readNow = async (offset: number, length: number, what: string) => {
    const out = new Uint8Array(length);
    await file.seek(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < length) {
      const n = await file.read(out.subarray(got));
      if (n === null) break;
      got += n;
    }
    if (got < length) throw truncated(path, size, offset, length, what);
    return out;
  };
  return {
    name: path,
    size,
    read(offset, length, what) {
      if (offset < 0 || offset + length > size) {
        return Promise.reject(truncated(path, size, offset, length, what));
      }
      const p = queue.then(() => readNow(offset, length, what));
      queue = p.catch(() => {});
      return p;
    },
    close: () => file.close(),
  };
}

/** A {@linkcode ByteSource} over bytes already in memory. */
export function memorySource(bytes: Uint8Array, name: string): ByteSource {
  return {
    name,
    size: bytes.length,
    read(offset, length, what) {
      if (offset < 0 || offset + length > bytes.length) {
        return Promise.reject(truncated(name, bytes.length, offset, length, what));
      }
      return Promise.resolve(bytes.subarray(offset, offset + length));
    },
    close() {},
  };
}

function truncated(name: string, size: number, offset: number, length: number, what: string): SlideError {
  return new SlideError(
    `Cannot read ${name}: expected ${length} bytes of ${what} at byte offset ${offset}, ` +
      `but the file has ${size} bytes (truncated?)`,
  );
}

// ------------------------------------------------------------------------------------------------- IFDs

/** Tag numbers used here (TIFF 6.0 appendix A, plus JPEGTables from TTN2). */
export const TAG = {
  NewSubfileType: 254,
  ImageWidth: 256,
  ImageLength: 257,
  BitsPerSample: 258,
  Compression: 259,
  Photometric: 262,
  ImageDescription: 270,
  StripOffsets: 273,
  SamplesPerPixel: 277,
  RowsPerStrip: 278,
  StripByteCounts: 279,
  XResolution: 282,
  YResolution: 283,
  PlanarConfiguration: 284,
  ResolutionUnit: 296,
  Predictor: 317,
  ColorMap: 320,
  TileWidth: 322,
  TileLength: 323,
  TileOffsets: 324,
  TileByteCounts: 325,
  SubIFDs: 330,
  SampleFormat: 339,
  JPEGTables: 347,
} as const;

/** A tag's value: numbers for the numeric types, text for ASCII, raw bytes for BYTE / UNDEFINED. */
export type TagValue = number[] | string | Uint8Array;

/** One image file directory. */
export interface Ifd {
  /** Position in the main IFD chain (0-based). */
  index: number;
  /** Byte offset of the IFD in the file. */
  offset: number;
  tags: Map<number, TagValue>;
}

/** Byte sizes of the TIFF field types (1 BYTE … 18 IFD8). */
export const TYPE_SIZE: Record<number, number> = {
  1: 1,
  2: 1,
  3: 2,
  4: 4,
  5: 8,
  6: 1,
  7: 1,
  8: 2,
  9: 4,
  10: 8,
  11: 4,
  12: 8,
  13: 4,
  16: 8,
  17: 8,
  18: 8,
};

/** The parsed header and main IFD chain of a TIFF or BigTIFF. */
export interface Tiff {
  littleEndian: boolean;
  bigTiff: boolean;
  ifds: Ifd[];
}

/** True if the bytes start with a TIFF (42) or BigTIFF (43) header. */
export function isTiff(b: Uint8Array): boolean {
  if (b.length < 4) return false;
  if (b[0] === 0x49 && b[1] === 0x49) return b[3] === 0 && (b[2] === 42 || b[2] === 43);
  if (b[0] === 0x4d && b[1] === 0x4d) return b[2] === 0 && (b[3] === 42 || b[3] === 43);
  return false;
}

/** Read the header and every IFD of the main chain (at most 4096, to stop on a loop). */
export async function readTiff(src: ByteSource): Promise<Tiff> {
  const name = src.name;
  const head = await src.read(0, Math.min(16, src.size), "TIFF header");
  if (!isTiff(head)) {
    throw new SlideError(`Cannot read ${name}: expected a TIFF header (II*\\0 or MM\\0*) at byte offset 0`);
  }
  const le = head[0] === 0x49;
  const hv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const bigTiff = hv.getUint16(2, le) === 43;
  let next: number;
  if (bigTiff) {
    if (head.length < 16 || hv.getUint16(4, le) !== 8) {
      throw new SlideError(`Cannot read ${name}: expected BigTIFF offset size 8 at byte offset 4`);
    }
    next = Number(hv.getBigUint64(8, le));
  } else {
    next = hv.getUint32(4, le);
  }
  const ifds: Ifd[] = [];
  const seen = new Set<number>();
  while (next !== 0) {
    if (seen.has(next) || ifds.length >= 4096) {
      throw new SlideError(`Cannot read ${name}: the IFD chain loops back to byte offset ${next}`);
    }
    seen.add(next);
    const { tags, nextOffset } = await readIfd(src, next, le, bigTiff, ifds.length);
    ifds.push({ index: ifds.length, offset: next, tags });
    next = nextOffset;
  }
  if (ifds.length === 0) throw new SlideError(`Cannot read ${name}: the TIFF has no IFD`);
  return { littleEndian: le, bigTiff, ifds };
}

async function readIfd(
  src: ByteSource,
  offset: number,
  le: boolean,
  big: boolean,
  index: number,
): Promise<{ tags: Map<number, TagValue>; nextOffset: number }> {
  const what = `IFD ${index}`;
  const countSize = big ? 8 : 2, entrySize = big ? 20 : 12, offSize = big ? 8 : 4;
  const cb = await src.read(offset, countSize, `${what} entry count`);
  const cv = new DataView(cb.buffer, cb.byteOffset, cb.byteLength);
  const n = big ? Number(cv.getBigUint64(0, le)) : cv.getUint16(0, le);
  const body = await src.read(offset + countSize, n * entrySize + offSize, `${what} (${n} entries)`);
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const off = (p: number) => big ? Number(v.getBigUint64(p, le)) : v.getUint32(p, le);
  const tags = new Map<number, TagValue>();
  for (let i = 0; i < n; i++) {
    const p = i * entrySize;
    const tag = v.getUint16(p, le), type = v.getUint16(p + 2, le);
    const count = big ? Number(v.getBigUint64(p + 4, le)) : v.getUint32(p + 4, le);
    const size = TYPE_SIZE[type];
    if (size === undefined) continue; // unknown type: TIFF 6.0 says readers skip it
    const bytes = size * count;
    const inline = bytes <= offSize;
    const valueAt = p + (big ? 12 : 8);
    const raw = inline
      ? body.subarray(valueAt, valueAt + bytes)
      : await src.read(off(valueAt), bytes, `${what} tag ${tag} (${count} values)`);
    tags.set(tag, decodeValue(raw, type, count, le));
  }
  return { tags, nextOffset: off(n * entrySize) };
}

function decodeValue(raw: Uint8Array, type: number, count: number, le: boolean): TagValue {
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (type === 2) return asciiText(raw).replace(/\0+$/, "");
  if (type === 1 || type === 7) return raw.slice();
  const out = new Array<number>(count);
  for (let i = 0; i < count; i++) {
    switch (type) {
      case 3:
        out[i] = v.getUint16(2 * i, le);
        break;
      case 8:
        out[i] = v.getInt16(2 * i, le);
        break;
      case 4:
      case 13:
        out[i] = v.getUint32(4 * i, le);
        break;
      case 9:
        out[i] = v.getInt32(4 * i, le);
        break;
      case 5:
        out[i] = v.getUint32(8 * i, le) / v.getUint32(8 * i + 4, le);
        break;
      case 10:
        out[i] = v.getInt32(8 * i, le) / v.getInt32(8 * i + 4, le);
        break;
      case 6:
        out[i] = v.getInt8(i);
        break;
      case 11:
        out[i] = v.getFloat32(4 * i, le);
        break;
      case 12:
        out[i] = v.getFloat64(8 * i, le);
        break;
      case 16:
      case 18:
        out[i] = Number(v.getBigUint64(8 * i, le));
        break;
      case 17:
        out[i] = Number(v.getBigInt64(8 * i, le));
        break;
    }
  }
  return out;
}

/**
 * An ASCII tag's text. TIFF 6.0 says 7-bit ASCII, but OME-XML descriptions are UTF-8 (`µm`), so UTF-8 when
 * the bytes are valid UTF-8, else Latin-1.
 */
function asciiText(raw: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    return new TextDecoder("latin1").decode(raw);
  }
}

/** A numeric tag's values, or undefined. */
export function nums(ifd: Ifd, tag: number): number[] | undefined {
  const t = ifd.tags.get(tag);
  if (t === undefined) return undefined;
  if (typeof t === "string") return undefined;
  return t instanceof Uint8Array ? Array.from(t) : t;
}

/** A numeric tag's first value, or `fallback`. */
export function num(ifd: Ifd, tag: number, fallback: number): number {
  return nums(ifd, tag)?.[0] ?? fallback;
}

/** An ASCII tag, or "". */
export function text(ifd: Ifd, tag: number): string {
  const t = ifd.tags.get(tag);
  return typeof t === "string" ? t : "";
}

/** A BYTE / UNDEFINED tag's bytes, or undefined. */
export function bytesOf(ifd: Ifd, tag: number): Uint8Array | undefined {
  const t = ifd.tags.get(tag);
  return t instanceof Uint8Array ? t : undefined;
}

// ----------------------------------------------------------------------------------------------- codecs

/** Compression names for errors (TIFF 6.0, TTN2, and the JPEG 2000 codes Aperio and others use). */
export const COMPRESSION: Record<number, string> = {
  1: "none",
  2: "CCITT RLE",
  3: "CCITT fax 3",
  4: "CCITT fax 4",
  5: "LZW",
  6: "old-style JPEG",
  7: "JPEG",
  8: "deflate",
  32773: "PackBits",
  32946: "deflate (old code)",
  33003: "JPEG 2000 (Aperio YCbCr)",
  33005: "JPEG 2000 (Aperio RGB)",
  34712: "JPEG 2000",
  34887: "LERC",
  34925: "LZMA",
  50000: "Zstandard",
  50001: "WebP",
  50002: "JPEG XL",
};

/** Compression codes {@linkcode decompress} handles (JPEG, 7, is decoded elsewhere). */
export const LOSSLESS = new Set([1, 5, 8, 32773, 32946]);

/**
 * Undo a lossless compression. `expected` is the decoded size of a full strip/tile; LZW and PackBits stop
 * there. Errors name `where` (file, tile, byte offset).
 */
export function decompress(
  data: Uint8Array,
  compression: number,
  expected: number,
  where: string,
): Uint8Array {
  switch (compression) {
    case 1:
      return data;
    case 5:
      return lzwDecode(data, expected, where);
    case 8:
    case 32946:
      try {
        return new Uint8Array(inflateSync(data));
      } catch (e) {
        throw new SlideError(`Cannot inflate ${where}: ${(e as Error).message}`);
      }
    case 32773:
      return packBitsDecode(data, expected, where);
  }
  throw new SlideError(`Cannot decode ${where}: compression ${compression} is not a lossless code`);
}

/**
 * TIFF LZW (TIFF 6.0 §13): MSB-first codes of 9–12 bits, ClearCode 256, EOI 257, the code width grows one
 * code early ("early change"). Stops at EOI or after `expected` bytes.
 */
export function lzwDecode(src: Uint8Array, expected: number, where: string): Uint8Array {
  let out = new Uint8Array(Math.max(expected, 1024));
  let o = 0;
  // Dictionary as (prefix code, last byte, length, first byte); strings are rebuilt backwards.
  const prefix = new Int32Array(4096), suffix = new Uint8Array(4096), len = new Uint16Array(4096);
  const first = new Uint8Array(4096);
  for (let i = 0; i < 256; i++) {
    prefix[i] = -1;
    suffix[i] = i;
    len[i] = 1;
    first[i] = i;
  }
  let next = 258, width = 9, old = -1;
  let bitBuf = 0, bitCnt = 0, p = 0;
  const put = (code: number) => {
    const l = len[code];
    if (o + l > out.length) {
      const bigger = new Uint8Array(Math.max(out.length * 2, o + l));
      bigger.set(out);
      out = bigger;
    }
    for (let k = o + l - 1, c = code; k >= o; k--, c = prefix[c]) out[k] = suffix[c];
    o += l;
  };
  while (o < expected) {
    while (bitCnt < width) {
      if (p >= src.length) return finish();
      bitBuf = ((bitBuf << 8) | src[p++]) >>> 0;
      bitCnt += 8;
    }
    const code = (bitBuf >>> (bitCnt - width)) & ((1 << width) - 1);
    bitCnt -= width;
    bitBuf &= (1 << bitCnt) - 1;
    if (code === 257) break;
    if (code === 256) {
      next = 258;
      width = 9;
      old = -1;
      continue;
    }
    if (old < 0) {
      if (code > 255) throw new SlideError(`Cannot decode LZW ${where}: code ${code} after a clear code`);
      put(code);
    } else if (code < next) {
      put(code);
      if (next < 4096) {
        prefix[next] = old;
        suffix[next] = first[code];
        len[next] = len[old] + 1;
        first[next] = first[old];
        next++;
      }
    } else if (code === next && next < 4096) {
      prefix[next] = old;
      suffix[next] = first[old];
      len[next] = len[old] + 1;
      first[next] = first[old];
      next++;
      put(code);
    } else {
      throw new SlideError(`Cannot decode LZW ${where}: bad code ${code} at input byte ${p}`);
    }
    old = code;
    if (next + 1 >= 1 << width && width < 12) width++;
  }
  return finish();
  function finish() {
    return out.subarray(0, o);
  }
}

/** PackBits (TIFF 6.0 §9): n ≥ 0 copies n+1 bytes, −127 ≤ n ≤ −1 repeats the next byte 1−n times. */
export function packBitsDecode(src: Uint8Array, expected: number, where: string): Uint8Array {
  const out = new Uint8Array(expected);
  let p = 0, o = 0;
  while (o < expected && p < src.length) {
    const n = (src[p++] << 24) >> 24;
    if (n >= 0) {
      const m = Math.min(n + 1, expected - o, src.length - p);
      out.set(src.subarray(p, p + m), o);
      p += n + 1;
      o += m;
    } else if (n !== -128) {
      if (p >= src.length) break;
      out.fill(src[p++], o, Math.min(expected, o + 1 - n));
      o = Math.min(expected, o + 1 - n);
    }
  }
  if (o < expected) {
    throw new SlideError(`Cannot decode PackBits ${where}: ${o} of ${expected} bytes before the data ended`);
  }
  return out;
}

/**
 * Undo horizontal differencing (Predictor 2, TIFF 6.0 §14) in place: rows of `width` pixels of `spp`
 * samples, 8 or 16 bits each (16-bit in the file's byte order).
 */
export function undoPredictor(
  data: Uint8Array,
  width: number,
  rows: number,
  spp: number,
  bits: number,
  littleEndian: boolean,
): void {
  if (bits === 8) {
    const rowBytes = width * spp;
    for (let y = 0; y < rows; y++) {
      const r = y * rowBytes;
      for (let i = r + spp; i < r + rowBytes; i++) data[i] = (data[i] + data[i - spp]) & 255;
    }
    return;
  }
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const rowBytes = width * spp * 2;
  for (let y = 0; y < rows; y++) {
    const r = y * rowBytes;
    for (let i = r + 2 * spp; i < r + rowBytes; i += 2) {
      v.setUint16(
        i,
        (v.getUint16(i, littleEndian) + v.getUint16(i - 2 * spp, littleEndian)) & 0xffff,
        littleEndian,
      );
    }
  }
}
