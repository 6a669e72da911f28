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
 * NOTE: old-style JPEG (compression 6) and other JPEG-in-TIFF layouts still go through utif's own JPEG
 * decoder (a warning says so: values may differ from PIL's by a few levels). utif 3.1.0 converts those from
 * YCbCr even when the TIFF says Photometric = RGB, so for such files its decoder is told not to.
 *
 * @module
 */
import UTIF from "utif";
import { decode as decodePng } from "fast-png";
import { decodeJpegRgb, spliceTables } from "./jpeg.ts";

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
    throw new ImageDecodeError(`Cannot decode ${name} as ${format}: ${(e as Error)?.message ?? e}`);
  }
  const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
  throw new ImageDecodeError(
    `Cannot decode ${name}: expected a TIFF, PNG or JPEG signature at byte 0, found [${head}] ` +
      `(${bytes.length} bytes)`,
  );
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
  if (cmpr === 32946) page.t259 = [8]; // the same zlib stream; utif knows only code 8
  const planar = page.t284?.[0] ?? 1;
  if (planar !== 1) throw new ImageDecodeError(`TIFF PlanarConfiguration ${planar} is not supported`);
  const photometric = page.t262?.[0] ?? (cmpr === 7 || cmpr === 6 ? 6 : 2);
  const spp = page.t277?.[0] ?? 1;
  const bps = page.t258?.[0] ?? 1;
  const sampleFormat = page.t339?.[0] ?? 1;
  if (sampleFormat !== 1) throw new ImageDecodeError(`TIFF SampleFormat ${sampleFormat} is not supported`);
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

function decodePngRgb(bytes: Uint8Array): RgbImage {
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
