/**
 * Image decoding to 8-bit RGB, matching what `PIL.Image.open(path).convert("RGB")` gives (the HE2Gene
 * dataset does exactly that before its transforms).
 *
 * - TIFF ({@link https://www.itu.int/itudoc/itu-t/com16/tiff-fx/docs/tiff6.pdf TIFF 6.0}) through
 *   `utif` 3.1.0: uncompressed, LZW, deflate (8 and the old 32946), PackBits, old JPEG (6); JPEG (7, 8-bit
 *   grey or RGB) through libjpeg-turbo, strip by strip or tile by tile. First page only.
 * - PNG ({@link https://www.w3.org/TR/png-3/ PNG 3}) through `fast-png`, JPEG through libjpeg-turbo
 *   (WebAssembly; PIL's own decoder, so the pixels are PIL's).
 *
 * PIL's conversions reproduced here:
 * - grey (L) → R = G = B; 1/2/4-bit grey is scaled (×255, ×85, ×17); WhiteIsZero TIFF is inverted;
 * - RGBA / LA → RGB by dropping alpha (no compositing), palette → its colours (transparency ignored);
 * - 16-bit RGB(A) / LA → the high byte; 16-bit grey (PIL mode `I;16` / `I`) → clipped to 255, because
 *   PIL converts `I` to `L` by clipping, not scaling;
 * - CMYK → RGB with PIL's `cmyk2rgb` (`r = 255 − k − c·(255 − k)/255`, rounded as `MULDIV255`).
 *
 * A file that is cut short or corrupt is refused, naming it and the byte offset, never decoded with zeros
 * where data are missing: every byte range a decoder reads is checked first — TIFF: the IFD chain (loops
 * too) and out-of-line tag values, the strips / tiles inside the file, uncompressed ones as long as their
 * rows, LZW / deflate / PackBits ones decompressing to all their rows; PNG: every chunk inside the file with
 * its CRC, the IEND chunk, a PLTE for palette images, and the image data decompressing to every scanline;
 * JPEG (files, and the 8-bit JPEG-in-TIFF chunks libjpeg decodes): the marker segments and the EOI marker
 * (slide/jpeg.ts `checkJpeg`); utif's JPEG-in-TIFF gets the range checks only.
 *
 * NOTE: old-style JPEG (compression 6) and other JPEG-in-TIFF layouts still go through utif's own JPEG
 * decoder (a warning says so: values may differ from PIL's by a few levels). utif 3.1.0 converts those from
 * YCbCr even when the TIFF says Photometric = RGB, so for such files its decoder is told not to.
 *
 * @module
 */
import { crc32, inflateSync } from "node:zlib";
import UTIF from "utif";
import { decode as decodePng } from "fast-png";
import { decodeJpegRgb, spliceTables } from "./jpeg.ts";
import { decompress, TYPE_SIZE as TIFF_TYPE_SIZE } from "./tiff.ts";

/** An 8-bit RGB image, rows top to bottom, pixels interleaved `R G B R G B …`. */
export interface RgbImage {
  width: number;
  height: number;
  channels: 3;
  /** `width × height × 3` bytes. */
  data: Uint8Array;
  /** Things the decoder could not reproduce exactly (e.g. utif's colours for JPEG-in-TIFF). */
  warnings: string[];
}

/** Thrown for a file that cannot be decoded; the message names the file. */
export class ImageDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ImageDecodeError";
  }
}

/**
 * Decode a TIFF, PNG or JPEG file to 8-bit RGB (the format is sniffed from the bytes, not the name).
 *
 * @param bytes the file's contents
 * @param name the file name, used in errors
 * @example
 * ```ts
 * import { decodeImage } from "./mod.ts";
 * const img = decodeImage(await Deno.readFile("D2_6_22.tif"), "D2_6_22.tif");
 * console.log(img.width, img.height, img.data.length); // 150 150 67500
 * ```
 */
export function decodeImage(bytes: Uint8Array, name: string): RgbImage {
  const format = sniff(bytes);
  if (format === "jpeg") return decodeJpeg(bytes, name);
  try {
    if (format === "tiff") return decodeTiff(bytes);
    if (format === "png") return decodePngRgb(bytes);
  } catch (e) {
    if (e instanceof ImageDecodeError) {
      throw new ImageDecodeError(`Cannot decode ${name}: ${e.message}`);
    }
    throw new ImageDecodeError(`Cannot decode ${name} as ${format}: ${causeOf(e)}`);
  }
  const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
  throw new ImageDecodeError(
    `Cannot decode ${name}: expected a TIFF, PNG or JPEG signature at byte 0, found [${head}] ` +
      `(${bytes.length} bytes)`,
  );
}

/**
 * The message of a library's error with its cause: never empty, never ending in a bare colon (fast-png
 * throws "Error while decompressing the data:" with the reason in `cause`).
 */
function causeOf(e: unknown): string {
  if (!(e instanceof Error)) return String(e) || "unknown error";
  let m = e.message.trim();
  if (e.cause !== undefined && (m === "" || m.endsWith(":"))) {
    const c = causeOf(e.cause);
    m = m === "" ? c : `${m} ${c}`;
  }
  m = m.replace(/:+$/, "").trim();
  return m || e.name || "unknown error";
}

/** The format named by the file's signature, or null. */
export function sniff(bytes: Uint8Array): "tiff" | "png" | "jpeg" | null {
  const b = bytes;
  if (
    b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49 && b[2] === 42 && b[3] === 0) ||
      (b[0] === 0x4d && b[1] === 0x4d && b[2] === 0 && b[3] === 42))
  ) return "tiff";
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return "png";
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  return null;
}

// ------------------------------------------------------------------------------------------------ TIFF

/** The subset of utif's IFD object we read: tags as `t<number>` arrays, plus what decodeImage adds. */
interface UtifPage {
  [tag: `t${number}`]: number[] | undefined;
  width?: number;
  height?: number;
  data?: Uint8Array;
}
interface Utif {
  // utif's minified pdf.js JPEG decoder; its field `B` is pdf.js's `colorTransform` (-1: decide).
  JpegDecoder: new () => { B: number };
  decode(buf: ArrayBuffer): UtifPage[];
  decodeImage(buf: ArrayBuffer, page: UtifPage, ifds: UtifPage[]): void;
}

const TIFF_COMPRESSION: Record<number, string> = {
  1: "none",
  5: "LZW",
  6: "old JPEG",
  7: "JPEG",
  8: "deflate",
  32773: "PackBits",
  32946: "deflate (old code)",
};

function decodeTiff(bytes: Uint8Array): RgbImage {
  const utif = UTIF as unknown as Utif;
  // utif reads past the end of the data without noticing (zeros, NaN) and follows IFD chains without end:
  // every byte range it will read is checked first.
  checkTiffIfds(bytes);
  // utif views `data.buffer` from offset 0 (deflate strips), so hand it a buffer of its own.
  const buf = bytes.slice().buffer;
  const ifds = utif.decode(buf);
  const page = ifds[0];
  if (!page || !page.t256 || !page.t257) throw new ImageDecodeError("the first TIFF IFD has no image size");
  const warnings: string[] = [];
  const cmpr = page.t259?.[0] ?? 1;
  if (!(cmpr in TIFF_COMPRESSION)) {
    throw new ImageDecodeError(`TIFF compression ${cmpr} is not supported`);
  }
  const planar = page.t284?.[0] ?? 1;
  if (planar !== 1) throw new ImageDecodeError(`TIFF PlanarConfiguration ${planar} is not supported`);
  const photometric = page.t262?.[0] ?? (cmpr === 7 || cmpr === 6 ? 6 : 2);
  const spp = page.t277?.[0] ?? 1;
  const bps = page.t258?.[0] ?? 1;
  const sampleFormat = page.t339?.[0] ?? 1;
  if (sampleFormat !== 1) throw new ImageDecodeError(`TIFF SampleFormat ${sampleFormat} is not supported`);
  checkTiffChunks(bytes, page, cmpr, spp, bps);
  if (cmpr === 32946) page.t259 = [8]; // the same zlib stream; utif knows only code 8
  if (cmpr === 7 && bps === 8 && (spp === 1 || spp === 3)) return decodeJpegTiff(bytes, page, photometric);
  if (cmpr === 6 || cmpr === 7) {
    warnings.push("JPEG data decoded by utif, not libjpeg: values may differ from PIL's by a few levels");
  }
  // utif 3.1.0 converts 3-channel JPEG tiles from YCbCr even when Photometric = RGB. For those files,
  // hand it a decoder with colorTransform = 0 (no conversion) for the duration of this call.
  const Jpeg = utif.JpegDecoder;
  if ((cmpr === 6 || cmpr === 7) && photometric === 2) {
    utif.JpegDecoder = function () {
      const d = new Jpeg();
      d.B = 0;
      return d;
    } as unknown as Utif["JpegDecoder"];
  }
  try {
    utif.decodeImage(buf, page, ifds);
  } finally {
    utif.JpegDecoder = Jpeg;
  }
  const width = page.width!, height = page.height!;
  const data = page.data!;
  // After JPEG decoding utif rewrites YCbCr (6) to RGB (2) and the data is 8-bit interleaved.
  const photo = page.t262?.[0] ?? photometric;
  const unpack = (bits: number, samples: number) => unpackSamples(data, width, height, samples, bits);
  switch (photo) {
    case 0:
    case 1: {
      // Grey (0: WhiteIsZero, 1: BlackIsZero), maybe with alpha.
      const s = unpack(bps, spp);
      const out = new Uint8Array(width * height * 3);
      for (let i = 0; i < width * height; i++) {
        let v = s[i * spp];
        if (bps === 16) v = Math.min(v, 255); // PIL: I;16 → L clips
        else if (bps < 8) v = v * (255 / ((1 << bps) - 1));
        if (photo === 0) v = 255 - v;
        out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = v;
      }
      return { width, height, channels: 3, data: out, warnings };
    }
    case 2: {
      if (spp < 3) throw new ImageDecodeError(`TIFF RGB with ${spp} samples per pixel`);
      const s = unpack(bps, spp);
      const out = new Uint8Array(width * height * 3);
      const shift = bps === 16 ? 8 : 0;
      if (bps !== 8 && bps !== 16) throw new ImageDecodeError(`TIFF RGB with ${bps} bits per sample`);
      for (let i = 0, j = 0; i < width * height; i++, j += spp) {
        out[i * 3] = s[j] >> shift;
        out[i * 3 + 1] = s[j + 1] >> shift;
        out[i * 3 + 2] = s[j + 2] >> shift;
      }
      return { width, height, channels: 3, data: out, warnings };
    }
    case 3: {
      const map = page.t320;
      if (!map) throw new ImageDecodeError("TIFF palette image without a ColorMap (tag 320)");
      const s = unpack(bps, 1);
      const n = 1 << bps;
      const out = new Uint8Array(width * height * 3);
      for (let i = 0; i < width * height; i++) {
        const k = s[i];
        out[i * 3] = map[k] >> 8;
        out[i * 3 + 1] = map[n + k] >> 8;
        out[i * 3 + 2] = map[2 * n + k] >> 8;
      }
      return { width, height, channels: 3, data: out, warnings };
    }
    case 5: {
      if (bps !== 8 || spp < 4) throw new ImageDecodeError(`TIFF CMYK with ${spp}×${bps} bits`);
      const out = new Uint8Array(width * height * 3);
      for (let i = 0, j = 0; i < width * height; i++, j += spp) cmykToRgb(data, j, out, i * 3);
      return { width, height, channels: 3, data: out, warnings };
    }
    default:
      throw new ImageDecodeError(`TIFF PhotometricInterpretation ${photo} is not supported`);
  }
}

/**
 * Check that every IFD utif will read lies inside the file: the main chain (without loops), each entry's
 * out-of-line values, and the sub-IFDs utif follows (SubIFDs 330, Exif 34665, DNG private data 50740,
 * MakerNote 37500). Throws an {@linkcode ImageDecodeError} naming the byte offset.
 */
function checkTiffIfds(b: Uint8Array, depth = 0): void {
  const size = b.length;
  if (size < 8) throw new ImageDecodeError(`the TIFF header needs 8 bytes, the file has ${size} (truncated)`);
  const le = b[0] === 0x49;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u16 = (p: number) => v.getUint16(p, le), u32 = (p: number) => v.getUint32(p, le);
  const need = (offset: number, length: number, what: string) => {
    if (offset + length > size) {
      throw new ImageDecodeError(
        `${what} at byte offset ${offset} needs ${length} bytes, but the file has ${size} (truncated)`,
      );
    }
  };
  let visits = 0;
  // One IFD; returns the offset of the next one in its chain.
  const ifd = (offset: number, what: string, level: number): number => {
    if (level > 4) throw new ImageDecodeError(`${what} at byte offset ${offset}: sub-IFDs nest too deep`);
    if (++visits > 4096) throw new ImageDecodeError("the TIFF has more than 4096 IFDs");
    need(offset, 2, `${what} (entry count)`);
    const n = u16(offset);
    need(offset + 2, n * 12 + 4, `${what} (${n} entries)`);
    for (let i = 0; i < n; i++) {
      const p = offset + 2 + 12 * i;
      const tag = u16(p), type = u16(p + 2), count = u32(p + 4), at = u32(p + 8);
      const bytes = (TIFF_TYPE_SIZE[type] ?? 0) * count;
      if (bytes > 4) need(at, bytes, `${what} tag ${tag} (${count} values)`);
      const values = bytes > 4 ? at : p + 8;
      const size1 = TIFF_TYPE_SIZE[type];
      if ((tag === 330 || tag === 34665) && (size1 === 1 || size1 === 2 || size1 === 4)) {
        // utif reads an IFD at each value, whatever the type.
        const val = (k: number) =>
          size1 === 1 ? b[values + k] : size1 === 2 ? u16(values + 2 * k) : u32(values + 4 * k);
        for (let k = 0; k < count; k++) ifd(val(k), `sub-IFD ${k} of tag ${tag}`, level + 1);
      } else if (tag === 50740 && bytes >= 4) {
        const q = u32(values); // utif: an IFD there if its entry count is < 300
        if (q + 2 <= size && u16(q) < 300) ifd(q, "DNG private IFD", level + 1);
      } else if (tag === 37500) {
        if (bytes >= 15 && String.fromCharCode(...b.subarray(values, values + 5)) === "Nikon") {
          checkTiffIfds(b.subarray(values + 10, values + bytes), depth + 1); // utif: a TIFF of its own
        } else if (at + 2 <= size && u16(at) < 300) ifd(at, "MakerNote IFD", level + 1);
      }
    }
    return u32(offset + 2 + 12 * n);
  };
  if (depth > 2) throw new ImageDecodeError("MakerNote TIFFs nest too deep");
  let next = u32(4), k = 0;
  if (next === 0) throw new ImageDecodeError("the TIFF has no IFD");
  const chain = new Set<number>();
  while (next !== 0) {
    if (chain.has(next)) throw new ImageDecodeError(`the TIFF's IFD chain loops back to byte offset ${next}`);
    chain.add(next);
    next = ifd(next, `IFD ${k++}`, 0);
  }
}

/**
 * Check the first page's strips or tiles before utif reads them: enough of them for the image, each inside
 * the file, uncompressed ones at least as long as their rows, and lossless compressed ones (LZW, deflate,
 * PackBits) decompressing to all their rows — utif fills what is missing with zeros.
 */
function checkTiffChunks(bytes: Uint8Array, page: UtifPage, cmpr: number, spp: number, bps: number): void {
  const size = bytes.length;
  const width = page.t256![0], height = page.t257![0];
  if (!(width >= 1 && height >= 1)) {
    throw new ImageDecodeError(`the TIFF image is ${width}×${height} pixels`);
  }
  const tiled = page.t322 !== undefined;
  const kind = tiled ? "tile" : "strip";
  const tw = tiled ? page.t322![0] : width;
  const th = tiled ? (page.t323?.[0] ?? 0) : Math.min(page.t278?.[0] ?? height, height);
  if (!(tw >= 1 && th >= 1)) {
    throw new ImageDecodeError(
      tiled ? `the TIFF's tiles are ${tw}×${th} pixels` : `the TIFF's RowsPerStrip is ${page.t278?.[0]}`,
    );
  }
  const offsets = (tiled ? page.t324 : page.t273) ?? [];
  const counts = tiled ? page.t325 : page.t279;
  const countTag = tiled ? "TileByteCounts" : "StripByteCounts";
  const across = Math.ceil(width / tw), down = Math.ceil(height / th), n = across * down;
  if (cmpr === 6 && page.t513) {
    // Old JPEG with one interchange stream (JPEGInterchangeFormat, its length).
    const [at, len] = [page.t513[0], page.t514?.[0] ?? 0];
    if (at + len > size) {
      throw new ImageDecodeError(
        `the JPEG stream (${len} bytes at byte offset ${at}) runs past the end of the file ` +
          `(${size} bytes): truncated`,
      );
    }
    if (offsets.length === 0) return;
  }
  if (offsets.length < n) {
    throw new ImageDecodeError(`the TIFF lists ${offsets.length} ${kind}s, the image needs ${n}`);
  }
  // utif reads a single uncompressed strip as the whole image, whatever its byte count says.
  if (counts === undefined && !(cmpr === 1 && offsets.length === 1)) {
    throw new ImageDecodeError(`the TIFF has no ${countTag} (tag ${tiled ? 325 : 279})`);
  }
  if (counts !== undefined && counts.length < n) {
    throw new ImageDecodeError(
      `the TIFF's ${countTag} lists ${counts.length} ${kind}s, the image needs ${n}`,
    );
  }
  // utif reads every strip listed, also any past the image's last row: those too must lie in the file.
  for (let i = n; !tiled && i < offsets.length; i++) {
    const [at, len] = [offsets[i], counts?.[i] ?? 0];
    if (at + len > size) {
      throw new ImageDecodeError(
        `strip ${i} (${len} bytes at byte offset ${at}) runs past the end of the file (${size} bytes): truncated`,
      );
    }
  }
  const rowBytes = Math.ceil(tw * spp * bps / 8);
  for (let i = 0; i < n; i++) {
    const rows = tiled ? th : Math.min(th, height - i * th);
    const full = rows * rowBytes; // the decoded size
    const at = offsets[i];
    const len = cmpr === 1 && counts === undefined ? full : counts![i];
    const where = `${kind} ${i}`;
    if (at + len > size) {
      throw new ImageDecodeError(
        `${where} (${len} bytes at byte offset ${at}) runs past the end of the file (${size} bytes): truncated`,
      );
    }
    if (cmpr === 1 && len < full) {
      throw new ImageDecodeError(
        `${where} holds ${len} bytes, but its ${rows} rows of uncompressed pixels need ${full} ` +
          `(truncated or corrupt)`,
      );
    }
    if (cmpr === 5 || cmpr === 8 || cmpr === 32946 || cmpr === 32773) {
      let got: number;
      try {
        got = decompress(bytes.subarray(at, at + len), cmpr, full, `${where} at byte offset ${at}`).length;
      } catch (e) {
        throw new ImageDecodeError(`${(e as Error).message} (truncated or corrupt)`);
      }
      if (got < full) {
        throw new ImageDecodeError(
          `${where} (${TIFF_COMPRESSION[cmpr]}, ${len} bytes at byte offset ${at}) decompresses to ${got} ` +
            `bytes, but its ${rows} rows need ${full} (truncated or corrupt)`,
        );
      }
    }
  }
}

/**
 * Unpack `samples` per pixel of `bits` each (1, 2, 4, 8 or 16; rows padded to a byte) into numbers.
 * utif has already swapped big-endian 16-bit samples to little-endian.
 */
function unpackSamples(
  data: Uint8Array,
  width: number,
  height: number,
  samples: number,
  bits: number,
): Uint8Array | Uint16Array {
  const n = width * height * samples;
  if (bits === 8) {
    if (data.length < n) throw new ImageDecodeError(`expected ${n} bytes of pixel data, got ${data.length}`);
    return data;
  }
  if (bits === 16) {
    if (data.length < 2 * n) {
      throw new ImageDecodeError(`expected ${2 * n} bytes of pixel data, got ${data.length}`);
    }
    const out = new Uint16Array(n);
    for (let i = 0; i < n; i++) out[i] = data[2 * i] | (data[2 * i + 1] << 8);
    return out;
  }
  if (bits === 1 || bits === 2 || bits === 4) return unpackBits(data, width * samples, height, bits);
  throw new ImageDecodeError(`${bits} bits per sample is not supported`);
}

/** Unpack MSB-first sub-byte samples; each row of `perRow` samples starts on a byte. */
function unpackBits(data: Uint8Array, perRow: number, height: number, bits: number): Uint8Array {
  const rowBytes = Math.ceil(perRow * bits / 8);
  if (data.length < rowBytes * height) {
    throw new ImageDecodeError(`expected ${rowBytes * height} bytes of pixel data, got ${data.length}`);
  }
  const out = new Uint8Array(perRow * height);
  const mask = (1 << bits) - 1;
  for (let y = 0; y < height; y++) {
    const row = data.subarray(y * rowBytes, (y + 1) * rowBytes);
    for (let x = 0; x < perRow; x++) {
      const bit = x * bits;
      out[y * perRow + x] = (row[bit >> 3] >> (8 - bits - (bit & 7))) & mask;
    }
  }
  return out;
}

// PIL's MULDIV255: a·b/255 rounded, in integers (libImaging/ImPlatform.h).
function muldiv255(a: number, b: number): number {
  const t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

// libImaging/Convert.c cmyk2rgb: nk = 255 − k; r = nk − c·nk/255 (clipped).
function cmykToRgb(src: ArrayLike<number>, j: number, out: Uint8Array, o: number): void {
  const nk = 255 - src[j + 3];
  for (let c = 0; c < 3; c++) out[o + c] = Math.max(0, Math.min(255, nk - muldiv255(src[j + c], nk)));
}

// ------------------------------------------------------------------------------------------------- PNG

/** PNG colour types (PNG 3 §11.2.1) → samples per pixel and the bit depths allowed. */
const PNG_COLOR_TYPES: Record<number, { samples: number; depths: number[]; name: string }> = {
  0: { samples: 1, depths: [1, 2, 4, 8, 16], name: "grey" },
  2: { samples: 3, depths: [8, 16], name: "RGB" },
  3: { samples: 1, depths: [1, 2, 4, 8], name: "palette" },
  4: { samples: 2, depths: [8, 16], name: "grey + alpha" },
  6: { samples: 4, depths: [8, 16], name: "RGBA" },
};

/** The seven Adam7 passes: first column, first row, column step, row step (PNG 3 §8.2). */
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [
  0,
  1,
  1,
  2,
]];

/**
 * Check a PNG's structure before fast-png reads it (fast-png does not notice a missing IEND, skips CRCs,
 * and reads a palette image without PLTE as black): the signature, every chunk inside the file with a
 * correct CRC, IHDR first and valid, a PLTE for palette images, IDAT data, an IEND, and the image data
 * decompressing to all the scanlines the header promises. Throws an {@linkcode ImageDecodeError} naming the
 * byte offset.
 */
function checkPng(b: Uint8Array): void {
  const size = b.length;
  const SIG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (size < 8 || SIG.some((x, i) => b[i] !== x)) {
    throw new ImageDecodeError("expected the 8-byte PNG signature at byte offset 0 (truncated or corrupt)");
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let p = 8;
  let header: { width: number; height: number; depth: number; type: number; interlace: number } | null = null;
  let palette = false, end = false;
  const idat: Uint8Array[] = [];
  while (!end) {
    if (p + 12 > size) {
      throw new ImageDecodeError(
        `the PNG ends at byte offset ${size} ${p === size ? "" : "inside a chunk header "}before its IEND ` +
          `chunk (truncated)`,
      );
    }
    const len = v.getUint32(p);
    const type = String.fromCharCode(...b.subarray(p + 4, p + 8));
    if (len > 0x7fffffff || p + 12 + len > size) {
      throw new ImageDecodeError(
        `the PNG chunk ${JSON.stringify(type)} at byte offset ${p} needs ${
          len + 12
        } bytes, but the file has ` +
          `${size} (truncated)`,
      );
    }
    if ((crc32(b.subarray(p + 4, p + 8 + len)) >>> 0) !== v.getUint32(p + 8 + len)) {
      throw new ImageDecodeError(
        `the PNG chunk ${JSON.stringify(type)} at byte offset ${p} fails its CRC check (corrupt)`,
      );
    }
    if (!header && type !== "IHDR") {
      throw new ImageDecodeError(
        `expected the PNG's IHDR chunk at byte offset ${p}, found ${JSON.stringify(type)}`,
      );
    }
    if (type === "IHDR") {
      if (header) throw new ImageDecodeError(`a second IHDR chunk at byte offset ${p}`);
      if (len !== 13) throw new ImageDecodeError(`the IHDR chunk holds ${len} bytes, not 13`);
      const d = p + 8;
      header = {
        width: v.getUint32(d),
        height: v.getUint32(d + 4),
        depth: b[d + 8],
        type: b[d + 9],
        interlace: b[d + 12],
      };
      const { width, height, depth, type: ct, interlace } = header;
      if (width < 1 || height < 1 || width > 0x7fffffff || height > 0x7fffffff) {
        throw new ImageDecodeError(`the PNG header says ${width}×${height} pixels`);
      }
      const t = PNG_COLOR_TYPES[ct];
      if (!t) throw new ImageDecodeError(`PNG colour type ${ct} does not exist`);
      if (!t.depths.includes(depth)) {
        throw new ImageDecodeError(`PNG ${t.name} at bit depth ${depth} does not exist`);
      }
      if (b[d + 10] !== 0 || b[d + 11] !== 0 || interlace > 1) {
        throw new ImageDecodeError(
          `the PNG header names compression ${b[d + 10]}, filter ${b[d + 11]}, interlace ${interlace}; ` +
            `only 0, 0, 0 or 1 exist`,
        );
      }
    } else if (type === "PLTE") palette = true;
    else if (type === "IDAT") idat.push(b.subarray(p + 8, p + 8 + len));
    else if (type === "IEND") end = true;
    p += 12 + len;
  }
  const h = header!;
  if (idat.length === 0) throw new ImageDecodeError("the PNG has no image data (IDAT chunk)");
  if (h.type === 3 && !palette) {
    throw new ImageDecodeError("the PNG palette image has no palette (PLTE chunk)");
  }
  // The filtered scanlines: one filter byte per row (per pass when interlaced, Adam7).
  const bits = PNG_COLOR_TYPES[h.type].samples * h.depth;
  const lines = (w: number, rows: number) => w > 0 && rows > 0 ? rows * (1 + Math.ceil(w * bits / 8)) : 0;
  let want = 0;
  if (h.interlace === 0) want = lines(h.width, h.height);
  else {
    for (const [x0, y0, dx, dy] of ADAM7) {
      want += lines(Math.ceil((h.width - x0) / dx), Math.ceil((h.height - y0) / dy));
    }
  }
  const z = new Uint8Array(idat.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of idat) {
    z.set(c, o);
    o += c.length;
  }
  let got: number;
  try {
    got = inflateSync(z).length;
  } catch (e) {
    throw new ImageDecodeError(
      `the PNG image data (IDAT, ${z.length} bytes) do not decompress: ${causeOf(e)} (truncated or corrupt)`,
    );
  }
  if (got < want) {
    throw new ImageDecodeError(
      `the PNG image data decompress to ${got} bytes, but ${h.width}×${h.height} pixels need ${want} ` +
        `(truncated or corrupt)`,
    );
  }
}

function decodePngRgb(bytes: Uint8Array): RgbImage {
  checkPng(bytes);
  const png = decodePng(bytes);
  const { width, height, depth, channels } = png;
  const warnings: string[] = [];
  const out = new Uint8Array(width * height * 3);
  const n = width * height;
  if (png.palette) {
    const idx = depth === 8
      ? png.data as Uint8Array
      : unpackBits(png.data as Uint8Array, width, height, depth);
    const pal = png.palette;
    for (let i = 0; i < n; i++) {
      const c = pal[idx[i]];
      if (!c) throw new ImageDecodeError(`palette index ${idx[i]} out of range (${pal.length} colours)`);
      out[i * 3] = c[0];
      out[i * 3 + 1] = c[1];
      out[i * 3 + 2] = c[2];
    }
    return { width, height, channels: 3, data: out, warnings };
  }
  // Grey (1), grey + alpha (2), RGB (3), RGBA (4); fast-png gives 16-bit data as a Uint16Array.
  const data = depth < 8 ? unpackBits(png.data as Uint8Array, width, height, depth) : png.data;
  if (channels <= 2) {
    for (let i = 0; i < n; i++) {
      let v = data[i * channels];
      // PIL: 16-bit grey opens as mode I and converts to L by clipping; 16-bit LA opens as RGBA (high byte).
      if (depth === 16) v = channels === 1 ? Math.min(v, 255) : v >> 8;
      else if (depth < 8) v = v * (255 / ((1 << depth) - 1));
      out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = v;
    }
  } else {
    const shift = depth === 16 ? 8 : 0;
    for (let i = 0, j = 0; i < n; i++, j += channels) {
      out[i * 3] = data[j] >> shift;
      out[i * 3 + 1] = data[j + 1] >> shift;
      out[i * 3 + 2] = data[j + 2] >> shift;
    }
  }
  return { width, height, channels: 3, data: out, warnings };
}

/**
 * A JPEG-compressed TIFF (compression 7, 8-bit grey or RGB) through libjpeg-turbo, strip by strip or tile by
 * tile, with the JPEGTables (tag 347) spliced in: as libtiff does for PIL, Photometric = RGB keeps the
 * components (no YCbCr step) and YCbCr converts.
 */
function decodeJpegTiff(bytes: Uint8Array, page: UtifPage, photometric: number): RgbImage {
  const width = page.t256![0], height = page.t257![0];
  const tiled = page.t322 !== undefined;
  const tw = tiled ? page.t322![0] : width;
  const th = tiled ? (page.t323?.[0] ?? height) : Math.min(page.t278?.[0] ?? height, height);
  const offsets = (tiled ? page.t324 : page.t273) ?? [];
  const counts = (tiled ? page.t325 : page.t279) ?? [];
  const across = Math.ceil(width / tw), down = Math.ceil(height / th);
  if (offsets.length < across * down || counts.length < across * down) {
    throw new ImageDecodeError(
      `the TIFF lists ${offsets.length} JPEG ${tiled ? "tiles" : "strips"}, the image needs ${across * down}`,
    );
  }
  const tables = page.t347 ? Uint8Array.from(page.t347) : undefined;
  const colorTransform = photometric === 2 ? false : photometric === 6 ? true : undefined;
  const out = new Uint8Array(width * height * 3);
  for (let i = 0; i < across * down; i++) {
    const [off, n] = [offsets[i], counts[i]];
    if (off + n > bytes.length) {
      throw new ImageDecodeError(`JPEG ${tiled ? "tile" : "strip"} ${i} runs past the end of the file`);
    }
    const x0 = (i % across) * tw, y0 = Math.floor(i / across) * th;
    const img = decodeJpegRgb(spliceTables(tables, bytes.subarray(off, off + n)), `JPEG chunk ${i}`, {
      colorTransform,
    });
    const cols = Math.min(tw, width - x0, img.width), rows = Math.min(th, height - y0, img.height);
    for (let r = 0; r < rows; r++) {
      const src = r * img.width * 3;
      out.set(img.data.subarray(src, src + cols * 3), ((y0 + r) * width + x0) * 3);
    }
  }
  return { width, height, channels: 3, data: out, warnings: [] };
}

// ------------------------------------------------------------------------------------------------ JPEG

function decodeJpeg(bytes: Uint8Array, name: string): RgbImage {
  let img;
  try {
    img = decodeJpegRgb(bytes, name);
  } catch (e) {
    throw new ImageDecodeError((e as Error).message);
  }
  return { width: img.width, height: img.height, channels: 3, data: img.data, warnings: [] };
}
