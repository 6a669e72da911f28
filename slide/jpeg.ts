/**
 * Baseline and progressive JPEG for slides and patches, decoded by libjpeg-turbo (the library PIL and
 * openslide use, compiled to WebAssembly by `@cwasm/jpeg-turbo`), so pixels equal PIL's: islow IDCT and
 * fancy (interpolating) chroma upsampling, TurboJPEG's defaults as PIL's. Also a structural check that finds
 * truncation and names the byte offset, and splicing TIFF JPEGTables (tag 347) into abbreviated tile streams.
 *
 * Specs: {@link https://www.w3.org/Graphics/JPEG/itu-t81.pdf ITU-T T.81} (B.1 marker segments, B.1.1.5
 * entropy-coded data: 0xFF is followed by a stuffed 0x00 or an RSTn), Adobe's
 * {@link https://www.awaresystems.be/imaging/tiff/specification/TIFFphotoshop.pdf TIFF Technical Note 2}
 * (JPEGTables holds an abbreviated table-specification stream: SOI, DQT/DHT, EOI), and libjpeg's colour
 * space rule (`jdapimin.c`, `default_decompress_parms`): a 3-component stream is YCbCr when it has a JFIF
 * APP0, else as its Adobe APP14 transform says (0 = RGB, 1 = YCbCr), else RGB only for component ids R, G, B.
 *
 * NOTE: the TurboJPEG build has `setjmp` stubbed; libjpeg's fatal errors reach us as a thrown `longjmp`,
 * and a non-zero return from `tjDecompress2` is a warning (e.g. extraneous bytes), which PIL ignores too.
 * Its `tjDecompressHeader3` refuses unusual chroma subsamplings, so the frame size comes from our own SOF
 * parse instead.
 *
 * @module
 */
import turboWasm from "@cwasm/jpeg-turbo/jpeg-turbo.wasm" with { type: "bytes" };
import { SlideError } from "./tiff.ts";

/** Frame facts from the SOF marker. */
export interface JpegInfo {
  width: number;
  height: number;
  components: number;
  /** Whether the stream carries an Adobe APP14 or JFIF APP0 (these decide its colour space). */
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

interface Turbo {
  memory: WebAssembly.Memory;
  malloc(n: number): number;
  free(p: number): void;
  tjInitDecompress(): number;
  tjDecompress2(
    h: number,
    src: number,
    size: number,
    dst: number,
    width: number,
    pitch: number,
    height: number,
    pixelFormat: number,
    flags: number,
  ): number;
  tjDestroy(h: number): number;
}

const TJPF_RGB = 0;
/** Past this the instance is dropped after a decode, so a slide's ~300 MB working memory is released. */
const KEEP_MEMORY = 256 * 2 ** 20;
let turboModule: WebAssembly.Module | null = null;
let turbo: Turbo | null = null;

function libjpeg(): Turbo {
  if (turbo) return turbo;
  turboModule ??= new WebAssembly.Module(turboWasm);
  const fail = (name: string) => () => {
    throw new Error(`libjpeg-turbo called ${name}`);
  };
  const inst = new WebAssembly.Instance(turboModule, {
    env: {
      setjmp: () => 0,
      longjmp: () => {
        throw new Error("libjpeg-turbo: fatal error in the JPEG data");
      },
    },
    wasi_snapshot_preview1: {
      environ_sizes_get: () => 0,
      environ_get: fail("environ_get"),
      proc_exit: fail("proc_exit"),
      fd_close: fail("fd_close"),
      fd_seek: fail("fd_seek"),
      fd_write: fail("fd_write"),
    },
  });
  return turbo = inst.exports as unknown as Turbo;
}

/** The Adobe APP14 segment (TN 5116): "Adobe", version 100, flags 0, 0, then the colour transform. */
function adobeSegment(transform: 0 | 1): Uint8Array {
  return Uint8Array.of(0xff, 0xee, 0, 14, 0x41, 0x64, 0x6f, 0x62, 0x65, 0, 100, 0, 0, 0, 0, transform);
}

/**
 * The same stream with its colour space fixed: SOI, an Adobe APP14 with `transform`, then the segments up to
 * the first scan without any JFIF APP0 or Adobe APP14 (libjpeg lets JFIF override Adobe), then the rest.
 * The stream must have passed {@linkcode checkJpeg}.
 */
export function withColorTransform(b: Uint8Array, transform: 0 | 1): Uint8Array {
  const keep: Uint8Array[] = [b.subarray(0, 2), adobeSegment(transform)];
  let p = 2;
  while (p + 4 <= b.length && b[p] === 0xff) {
    const m = b[p + 1];
    if (m === 0xff) { // fill byte
      p++;
      continue;
    }
    if (m === 0xda || m === 0xd9) break;
    const len = (b[p + 2] << 8) | b[p + 3];
    if (m !== 0xe0 && m !== 0xee) keep.push(b.subarray(p, p + 2 + len));
    p += 2 + len;
  }
  keep.push(b.subarray(p));
  const out = new Uint8Array(keep.reduce((n, k) => n + k.length, 0));
  let o = 0;
  for (const k of keep) out.set(k, (o += k.length) - k.length);
  return out;
}

/**
 * Decode a JPEG stream to interleaved RGB with libjpeg-turbo (as PIL's `Image.open(p).convert("RGB")`;
 * grey streams come back with R = G = B). `colorTransform: false` takes the three components as RGB (TIFF
 * Photometric = RGB, e.g. Aperio SVS), true as YCbCr; undefined follows libjpeg's rule (JFIF/Adobe markers,
 * then component ids). Truncated or malformed streams throw a {@linkcode SlideError} naming `where`.
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
  const src = info.components === 3 && opts.colorTransform !== undefined
    ? withColorTransform(b, opts.colorTransform ? 1 : 0)
    : b;
  const { width, height } = info;
  const t = libjpeg();
  let inp = 0, out = 0, h = 0;
  try {
    inp = t.malloc(src.length);
    out = t.malloc(width * height * 3);
    if (inp === 0 || out === 0) {
      throw new Error(`out of WebAssembly memory for ${width} × ${height} pixels`);
    }
    new Uint8Array(t.memory.buffer, inp, src.length).set(src);
    h = t.tjInitDecompress();
    if (h === 0) throw new Error("could not start a decompressor");
    // A non-zero status without a thrown longjmp is a libjpeg warning (the image is complete).
    t.tjDecompress2(h, inp, src.length, out, width, width * 3, height, TJPF_RGB, 0);
    return { width, height, data: new Uint8Array(t.memory.buffer, out, width * height * 3).slice() };
  } catch (e) {
    // A fatal error leaves the instance's stack mid-call: start a fresh one next time.
    turbo = null;
    throw new SlideError(`Cannot decode ${where}: ${(e as Error).message}`);
  } finally {
    if (turbo) {
      if (h) t.tjDestroy(h);
      if (out) t.free(out);
      if (inp) t.free(inp);
      if (t.memory.buffer.byteLength > KEEP_MEMORY) turbo = null;
    }
  }
}
