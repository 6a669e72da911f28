/**
 * Whole-slide images: open a pyramid TIFF / BigTIFF (Aperio SVS included) or a plain JPEG / PNG and read
 * RGB regions from any level, decoding only the tiles or strips a region touches.
 *
 * - TIFF ({@link https://www.itu.int/itudoc/itu-t/com16/tiff-fx/docs/tiff6.pdf TIFF 6.0}) and BigTIFF are
 *   parsed in `./tiff.ts` from positioned reads (the file is never read whole). Tiles and strips in
 *   none / LZW / deflate / PackBits (with the horizontal predictor) and JPEG (`./jpeg.ts`, with shared
 *   JPEGTables). JPEG 2000 (Aperio 33003 / 33005, 34712) and other codes fail at open, naming the code.
 * - Pyramid levels are IFD 0 and the later IFDs of decreasing size with the same layout (tiled or striped)
 *   and aspect ratio; Aperio's thumbnail (a JPEG strip), label and macro (ImageDescription `label` /
 *   `macro`) and masks (NewSubfileType bit 2) are skipped. `downsample` = level-0 width / level width.
 * - Colour: JPEG tiles with Photometric = RGB (2), as Aperio writes them, are decoded without the YCbCr →
 *   RGB step (converting anyway turns tissue magenta); Photometric = YCbCr (6) converts.
 * - Microns per pixel (`resolution`, x and y, with where they came from), most trusted first: Aperio's
 *   `MPP = …` in level 0's ImageDescription; XResolution / YResolution with ResolutionUnit 2 (inch, the
 *   default as TIFF 6.0 says) or 3 (centimetre); OME-XML's first `Pixels` `PhysicalSizeX` / `PhysicalSizeY`
 *   with their units (default µm; the
 *   {@link https://www.openmicroscopy.org/Schemas/Documentation/Generated/OME-2016-06/ome.html OME schema});
 *   else null. JPEG / PNG: null unless given in the options. The `mpp` option overrides all.
 * - JPEG / PNG files open as one level: decoded once (libjpeg-turbo / fast-png), the RGB kept.
 * - JPEG data decode with libjpeg-turbo compiled to WebAssembly (`jpeg.ts`), so pixels equal openslide's
 *   and PIL's.
 *
 * @module
 */
import { decodeImage } from "./decode.ts";
import { decodeJpegRgb, spliceTables } from "./jpeg.ts";
import {
  bytesOf,
  type ByteSource,
  COMPRESSION,
  decompress,
  type Ifd,
  isTiff,
  LOSSLESS,
  num,
  nums,
  openFileSource,
  readTiff,
  SlideError,
  TAG,
  text,
  undoPredictor,
} from "./tiff.ts";

export { SlideError } from "./tiff.ts";

/** One pyramid level. */
export interface SlideLevel {
  width: number;
  height: number;
  /** Level-0 width / this level's width (1 for level 0). */
  downsample: number;
  /** Tile size, for tiled TIFF levels. */
  tileWidth?: number;
  tileHeight?: number;
}

/** An RGB region read from one level. */
export interface Region {
  /** `width × height × 3` bytes, rows top to bottom, `R G B R G B …`. */
  data: Uint8Array;
  width: number;
  height: number;
  /** True if part of the region lies outside the level; those pixels are white (255). */
  outside: boolean;
}

/** An open slide. */
export interface Slide {
  /** The path it was opened from. */
  readonly path: string;
  /** The container: a TIFF (pyramid or not), or a single JPEG / PNG image. */
  readonly format: "tiff" | "jpeg" | "png";
  /** Pyramid levels, level 0 (full resolution) first, decreasing in size. */
  readonly levels: readonly SlideLevel[];
  /** Microns per pixel at level 0 across (`resolution.x`), or null when the file does not say. */
  readonly mpp: number | null;
  /** Microns per level-0 pixel across and down, and where they came from; null when the file does not say. */
  readonly resolution: SlideMpp | null;
  /**
   * Read `w × h` pixels of `level` whose top-left corner is (`x`, `y`) in that level's own pixel
   * coordinates (for a level-0 position `X`, pass `Math.round(X / downsample)`). Pixels past the level's
   * edges are white and `outside` is true.
   */
  readRegion(level: number, x: number, y: number, w: number, h: number): Promise<Region>;
  /** Close the file and drop the tile cache. */
  close(): void;
}

/** Where a slide's microns per pixel came from (see {@linkcode SlideMpp}). */
export type MppSource = "option" | "aperio" | "tiff" | "ome" | "scalefactors";

/** Microns per level-0 pixel across (x) and down (y), and where they came from. */
export interface SlideMpp {
  x: number;
  y: number;
  /**
   * `option` (given to {@linkcode openSlide}), `aperio` (ImageDescription `MPP`), `tiff` (X/YResolution and
   * ResolutionUnit), `ome` (OME-XML PhysicalSizeX/Y), `scalefactors` (a Visium image's scalefactors_json.json,
   * set by the caller, see slide/datasets/visium.ts).
   */
  source: MppSource;
  /** The source for people, with the values as the file gives them: `the Aperio ImageDescription (MPP = 0.4990)`. */
  detail: string;
}

/** Options of {@linkcode openSlide}. */
export interface OpenSlideOptions {
  /**
   * Microns per pixel at level 0; overrides what the file says (the only source for JPEG / PNG). A number
   * is square pixels given as an option; a {@linkcode SlideMpp} is kept as it is.
   */
  mpp?: number | SlideMpp;
  /** Bytes of decoded tiles to keep (least recently used dropped first). Default 64 MiB. */
  cacheBytes?: number;
}

/**
 * Open a whole-slide image (tiled or striped TIFF / BigTIFF, Aperio SVS) or a plain JPEG / PNG.
 *
 * @param path the file
 * @param opts `mpp` to set microns per pixel, `cacheBytes` for the decoded-tile cache
 * @throws {SlideError} for an unsupported format or compression (named, with the file), or a truncated
 *   or malformed file (with the byte offset)
 * @example
 * ```ts
 * import { openSlide } from "./wsi.ts";
 * const slide = await openSlide("CMU-1-Small-Region.svs");
 * console.log(slide.levels[0], slide.mpp); // { width: 2220, height: 2967, downsample: 1, … } 0.499
 * const r = await slide.readRegion(0, 1000, 1000, 256, 256); // r.data: 256 × 256 × 3 RGB bytes
 * slide.close();
 * ```
 */
export async function openSlide(path: string, opts: OpenSlideOptions = {}): Promise<Slide> {
  const src = await openFileSource(path);
  try {
    const head = await src.read(0, Math.min(16, src.size), "file signature");
    if (isTiff(head)) return await openTiff(src, opts);
    const bytes = await src.read(0, src.size, "image");
    src.close();
    if (head[0] === 0xff && head[1] === 0xd8) {
      return imageSlide(path, "jpeg", decodeJpegRgb(bytes, path), opts);
    }
    if (head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47) {
      try {
        return imageSlide(path, "png", decodeImage(bytes, path), opts);
      } catch (e) {
        throw new SlideError((e as Error).message);
      }
    }
    const sig = Array.from(head.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
    throw new SlideError(
      `Cannot open ${path}: expected a TIFF, JPEG or PNG signature at byte offset 0, found [${sig}]`,
    );
  } catch (e) {
    try {
      src.close();
    } catch { /* already closed */ }
    throw e;
  }
}

// ----------------------------------------------------------------------------------------- single image

function imageSlide(
  path: string,
  format: "jpeg" | "png",
  img: { width: number; height: number; data: Uint8Array },
  opts: OpenSlideOptions,
): Slide {
  const chunk: Chunk = { data: img.data, width: img.width, rows: img.height };
  const level: Level = {
    info: { width: img.width, height: img.height, downsample: 1 },
    tw: img.width,
    th: img.height,
    across: 1,
    chunk: () => Promise.resolve(chunk),
  };
  return makeSlide(path, format, [level], optionMpp(opts.mpp) ?? null, () => {
    chunk.data = new Uint8Array(0);
  });
}

// ------------------------------------------------------------------------------------------ the pyramid

/** A decoded tile or strip: `rows` rows of `width` RGB pixels. */
interface Chunk {
  data: Uint8Array;
  width: number;
  rows: number;
}

/** A level as the region reader sees it: a grid of `tw × th` chunks, `across` per row. */
interface Level {
  info: SlideLevel;
  tw: number;
  th: number;
  across: number;
  chunk(index: number): Promise<Chunk>;
}

/** What a TIFF level needs to decode its chunks. */
interface TiffLevel {
  ifd: Ifd;
  width: number;
  height: number;
  tiled: boolean;
  tw: number;
  th: number;
  across: number;
  offsets: number[];
  counts: number[];
  compression: number;
  photometric: number;
  spp: number;
  bps: number;
  predictor: number;
  jpegTables?: Uint8Array;
  colormap?: number[];
}

async function openTiff(src: ByteSource, opts: OpenSlideOptions): Promise<Slide> {
  const tiff = await readTiff(src);
  const name = src.name;
  const base = tiff.ifds[0];
  const chosen: Ifd[] = [base];
  const w0 = num(base, TAG.ImageWidth, 0), h0 = num(base, TAG.ImageLength, 0);
  const tiled0 = base.tags.has(TAG.TileWidth);
  for (const ifd of tiff.ifds.slice(1)) {
    const prev = chosen[chosen.length - 1];
    const w = num(ifd, TAG.ImageWidth, 0), h = num(ifd, TAG.ImageLength, 0);
    if (num(ifd, TAG.NewSubfileType, 0) & 4) continue; // transparency mask
    if (/(^|\n)\s*(label|macro|thumbnail)\b/i.test(text(ifd, TAG.ImageDescription))) continue;
    if (ifd.tags.has(TAG.TileWidth) !== tiled0) continue; // e.g. Aperio's JPEG-strip thumbnail
    if (w <= 0 || h <= 0) continue;
    if (w >= num(prev, TAG.ImageWidth, 0) || h > num(prev, TAG.ImageLength, 0)) continue;
    if (Math.abs(h0 * w / w0 - h) > Math.max(2, 0.02 * h)) continue; // another aspect ratio
    chosen.push(ifd);
  }
  const tl = chosen.map((ifd, k) => tiffLevel(name, ifd, k));
  const cache = new TileCache(opts.cacheBytes ?? 64 << 20);
  const levels: Level[] = tl.map((t, k) => ({
    info: {
      width: t.width,
      height: t.height,
      downsample: k === 0 ? 1 : w0 / t.width,
      ...(t.tiled ? { tileWidth: t.tw, tileHeight: t.th } : {}),
    },
    tw: t.tw,
    th: t.th,
    across: t.across,
    chunk: (i) => cache.get(`${k}:${i}`, () => readChunk(src, t, k, i, tiff.littleEndian)),
  }));
  return makeSlide(name, "tiff", levels, optionMpp(opts.mpp) ?? tiffMpp(base), () => {
    cache.clear();
    src.close();
  });
}

// ------------------------------------------------------------------------------------ microns per pixel

function optionMpp(mpp: number | SlideMpp | undefined): SlideMpp | undefined {
  if (mpp === undefined || typeof mpp === "object") return mpp;
  return { x: mpp, y: mpp, source: "option", detail: `the mpp option (${mpp})` };
}

const positive = (v: number | undefined): v is number => v !== undefined && Number.isFinite(v) && v > 0;
/** A number as the file gives it, without float noise (28.34000015743831 → 28.34). */
const shown = (v: number) => String(Number(v.toPrecision(8)));

/**
 * Microns per pixel from level 0's tags, most trusted first: Aperio's `MPP`, then XResolution /
 * YResolution + ResolutionUnit, then OME-XML `PhysicalSizeX` / `PhysicalSizeY`.
 */
function tiffMpp(ifd: Ifd): SlideMpp | null {
  const description = text(ifd, TAG.ImageDescription);
  return aperioMpp(description) ?? resolutionMpp(ifd) ?? omeMpp(description);
}

/**
 * Aperio's `MPP = 0.4990` field of an SVS ImageDescription (`header|key = value|…`), square pixels.
 *
 * @example
 * ```ts
 * import { aperioMpp } from "./wsi.ts";
 * aperioMpp("Aperio Image Library v10.0.51\r\n46920x33014 …|AppMag = 20|MPP = 0.4990|Left = 25.69");
 * // { x: 0.499, y: 0.499, source: "aperio", detail: "the Aperio ImageDescription (MPP = 0.4990)" }
 * ```
 */
export function aperioMpp(description: string): SlideMpp | null {
  const m = /\|\s*MPP\s*=\s*([0-9.eE+-]+)/.exec(description);
  const v = m ? Number(m[1]) : NaN;
  if (!positive(v)) return null;
  return { x: v, y: v, source: "aperio", detail: `the Aperio ImageDescription (MPP = ${m![1]})` };
}

/** XResolution / YResolution (pixels per unit) with ResolutionUnit 2 (inch, the default) or 3 (cm). */
function resolutionMpp(ifd: Ifd): SlideMpp | null {
  const xres = nums(ifd, TAG.XResolution)?.[0];
  const yres = nums(ifd, TAG.YResolution)?.[0] ?? xres;
  const unit = num(ifd, TAG.ResolutionUnit, 2); // 1: no absolute unit
  if (!positive(xres) || !positive(yres) || (unit !== 2 && unit !== 3)) return null;
  const um = unit === 2 ? 25400 : 10000;
  const per = unit === 2 ? "inch" : "centimetre";
  const said = ifd.tags.has(TAG.ResolutionUnit) ? "" : ", no ResolutionUnit: inch as TIFF 6.0 says";
  return {
    x: um / xres,
    y: um / yres,
    source: "tiff",
    detail: `the TIFF XResolution / YResolution (${shown(xres)} / ${shown(yres)} pixels per ${per}${said})`,
  };
}

/** µm per OME `UnitsLength` symbol (the metric ones, ångström and inch; `pixel` has no length). */
const OME_UNIT_UM: Record<string, number> = {
  "pm": 1e-6,
  "Å": 1e-4,
  "nm": 1e-3,
  "µm": 1,
  "μm": 1, // Greek mu
  "um": 1,
  "mm": 1e3,
  "cm": 1e4,
  "dm": 1e5,
  "m": 1e6,
  "in": 25400,
};

/**
 * `PhysicalSizeX` / `PhysicalSizeY` of the first `Pixels` element of an OME-XML document (an OME-TIFF's
 * ImageDescription), converted from `PhysicalSizeXUnit` / `PhysicalSizeYUnit` (default µm) to µm. A
 * missing `PhysicalSizeY` is taken equal to X. Null when the text is not OME-XML, has no positive
 * `PhysicalSizeX`, or gives a unit without a length (`pixel`, `reference frame`).
 *
 * @example
 * ```ts
 * import { omeMpp } from "./wsi.ts";
 * omeMpp('<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25"/></Image></OME>');
 * // { x: 0.25, y: 0.25, source: "ome", detail: "OME-XML PhysicalSizeX / PhysicalSizeY (250 nm / 0.25 µm)" }
 * ```
 */
export function omeMpp(xml: string): SlideMpp | null {
  if (!/<(\w+:)?OME[\s>]/.test(xml)) return null;
  const pixels = /<(?:\w+:)?Pixels\b([^>]*)>/.exec(xml);
  if (!pixels) return null;
  const attrs = new Map<string, string>();
  for (const m of pixels[1].matchAll(/([\w:]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
    attrs.set(m[1], xmlText(m[2] ?? m[3]));
  }
  const size = (axis: "X" | "Y") => {
    const raw = attrs.get(`PhysicalSize${axis}`);
    const unit = attrs.get(`PhysicalSize${axis}Unit`) ?? "µm";
    const v = Number(raw), f = OME_UNIT_UM[unit];
    return raw !== undefined && positive(v) && f !== undefined ? { um: v * f, said: `${raw} ${unit}` } : null;
  };
  const x = size("X");
  if (!x) return null;
  const y = attrs.has("PhysicalSizeY") ? size("Y") : x;
  if (!y) return null;
  return {
    x: x.um,
    y: y.um,
    source: "ome",
    detail: `OME-XML PhysicalSizeX / PhysicalSizeY (${x.said} / ${y.said})`,
  };
}

/** An XML attribute value with its character references and the five predefined entities replaced. */
function xmlText(s: string): string {
  const named: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|\w+);/g, (all, e: string) => {
    if (e[0] !== "#") return named[e] ?? all;
    return String.fromCodePoint(e[1] === "x" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
  });
}

/** Read a level's layout and refuse what the chunk decoder cannot do, naming the file and IFD. */
function tiffLevel(name: string, ifd: Ifd, k: number): TiffLevel {
  const width = num(ifd, TAG.ImageWidth, 0), height = num(ifd, TAG.ImageLength, 0);
  const what = `level ${k} (IFD ${ifd.index} at byte offset ${ifd.offset}, ${width} × ${height})`;
  const fail = (msg: string) => new SlideError(`Cannot open ${name}: ${what} ${msg}`);
  if (width <= 0 || height <= 0) throw fail("has no ImageWidth / ImageLength");
  const compression = num(ifd, TAG.Compression, 1);
  if (!LOSSLESS.has(compression) && compression !== 7) {
    throw fail(
      `uses TIFF compression ${compression} (${COMPRESSION[compression] ?? "unknown"}), which is not ` +
        `supported (supported: none, LZW, deflate, PackBits, JPEG)`,
    );
  }
  const tiled = ifd.tags.has(TAG.TileWidth);
  const tw = tiled ? num(ifd, TAG.TileWidth, 0) : width;
  const th = tiled ? num(ifd, TAG.TileLength, 0) : Math.min(num(ifd, TAG.RowsPerStrip, height), height);
  if (tw <= 0 || th <= 0) throw fail(`has tile size ${tw} × ${th}`);
  const across = Math.ceil(width / tw), down = Math.ceil(height / th);
  const offsets = nums(ifd, tiled ? TAG.TileOffsets : TAG.StripOffsets);
  const counts = nums(ifd, tiled ? TAG.TileByteCounts : TAG.StripByteCounts);
  const kind = tiled ? "tile" : "strip";
  if (!offsets || !counts || offsets.length < across * down || counts.length < across * down) {
    throw fail(
      `expected ${across * down} ${kind} offsets and byte counts, found ${offsets?.length ?? 0} and ` +
        `${counts?.length ?? 0}`,
    );
  }
  const planar = num(ifd, TAG.PlanarConfiguration, 1);
  if (planar !== 1) throw fail(`has PlanarConfiguration ${planar} (only 1, interleaved, is supported)`);
  const sampleFormat = num(ifd, TAG.SampleFormat, 1);
  if (sampleFormat !== 1) throw fail(`has SampleFormat ${sampleFormat} (only unsigned integers)`);
  const spp = num(ifd, TAG.SamplesPerPixel, 1), bps = num(ifd, TAG.BitsPerSample, 1);
  const photometric = num(ifd, TAG.Photometric, compression === 7 && spp === 3 ? 6 : spp >= 3 ? 2 : 1);
  const predictor = num(ifd, TAG.Predictor, 1);
  const colormap = nums(ifd, TAG.ColorMap);
  if (compression === 7) {
    if (bps !== 8 || (spp !== 1 && spp !== 3)) throw fail(`is JPEG with ${spp} × ${bps}-bit samples`);
  } else {
    const ok = (photometric <= 1 && spp >= 1 && (bps === 8 || bps === 16)) ||
      (photometric === 2 && spp >= 3 && (bps === 8 || bps === 16)) ||
      (photometric === 3 && spp === 1 && bps === 8 && colormap !== undefined);
    if (!ok) throw fail(`has Photometric ${photometric} with ${spp} × ${bps}-bit samples, not supported`);
    if (predictor !== 1 && predictor !== 2) throw fail(`has Predictor ${predictor} (only 1 and 2)`);
  }
  return {
    ifd,
    width,
    height,
    tiled,
    tw,
    th,
    across,
    offsets,
    counts,
    compression,
    photometric,
    spp,
    bps,
    predictor,
    jpegTables: bytesOf(ifd, TAG.JPEGTables),
    colormap,
  };
}

/** Read and decode tile / strip `i` of a TIFF level to RGB. */
async function readChunk(src: ByteSource, t: TiffLevel, k: number, i: number, le: boolean): Promise<Chunk> {
  const kind = t.tiled ? "tile" : "strip";
  const rows = t.tiled ? t.th : Math.min(t.th, t.height - i * t.th);
  const off = t.offsets[i], n = t.counts[i];
  if (off === 0 || n === 0) { // sparse (never written): white, as openslide shows it
    return { data: new Uint8Array(t.tw * rows * 3).fill(255), width: t.tw, rows };
  }
  const where = `${src.name} level ${k} ${kind} ${i} (${n} bytes at byte offset ${off})`;
  const raw = await src.read(off, n, `level ${k} ${kind} ${i}`);
  if (t.compression === 7) {
    const stream = t.jpegTables ? spliceTables(t.jpegTables, raw) : raw;
    const colorTransform = t.photometric === 2 ? false : t.photometric === 6 ? true : undefined;
    const img = decodeJpegRgb(stream, where, { colorTransform });
    const needW = Math.min(t.tw, t.width);
    if (img.width < needW || img.height < rows) {
      throw new SlideError(
        `Cannot decode ${where}: the JPEG is ${img.width} × ${img.height}, expected at least ${needW} × ${rows}`,
      );
    }
    return { data: img.data, width: img.width, rows: img.height };
  }
  const rowBytes = Math.ceil(t.tw * t.spp * t.bps / 8);
  const expected = rowBytes * rows;
  let dec = decompress(raw, t.compression, expected, where);
  if (dec.length < expected) {
    throw new SlideError(`Cannot decode ${where}: expected ${expected} decoded bytes, got ${dec.length}`);
  }
  if (t.predictor === 2) undoPredictor(dec, t.tw, rows, t.spp, t.bps, le);
  dec = dec.subarray(0, expected);
  return { data: toRgb(dec, t, rows, le), width: t.tw, rows };
}

/** Decoded samples (8 or 16 bits, interleaved) → RGB. 16-bit keeps the high byte. */
function toRgb(s: Uint8Array, t: TiffLevel, rows: number, le: boolean): Uint8Array {
  const n = t.tw * rows, spp = t.spp;
  if (t.bps === 8 && t.photometric === 2 && spp === 3) return s;
  const out = new Uint8Array(n * 3);
  const step = spp * (t.bps / 8);
  const hi = t.bps === 16 ? (le ? 1 : 0) : 0;
  const sample = t.bps / 8;
  if (t.photometric === 2) {
    for (let i = 0, j = hi; i < n; i++, j += step) {
      out[3 * i] = s[j];
      out[3 * i + 1] = s[j + sample];
      out[3 * i + 2] = s[j + 2 * sample];
    }
  } else if (t.photometric <= 1) {
    const inv = t.photometric === 0 ? 255 : 0;
    for (let i = 0, j = hi; i < n; i++, j += step) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = inv ^ s[j];
  } else {
    const map = t.colormap!;
    for (let i = 0; i < n; i++) {
      const c = s[i];
      out[3 * i] = map[c] >> 8;
      out[3 * i + 1] = map[256 + c] >> 8;
      out[3 * i + 2] = map[512 + c] >> 8;
    }
  }
  return out;
}

// ----------------------------------------------------------------------------------------------- cache

/** Decoded chunks by key, least recently used dropped first once their bytes pass the budget. */
class TileCache {
  #map = new Map<string, { p: Promise<Chunk>; bytes: number }>();
  #bytes = 0;
  constructor(readonly budget: number) {}

  get(key: string, make: () => Promise<Chunk>): Promise<Chunk> {
    const hit = this.#map.get(key);
    if (hit) {
      this.#map.delete(key);
      this.#map.set(key, hit);
      return hit.p;
    }
    const entry = { p: make(), bytes: 0 };
    this.#map.set(key, entry);
    entry.p.then((c) => {
      if (this.#map.get(key) !== entry) return;
      entry.bytes = c.data.byteLength;
      this.#bytes += entry.bytes;
      this.#evict();
    }, () => {
      if (this.#map.get(key) === entry) this.#map.delete(key);
    });
    return entry.p;
  }

  clear(): void {
    this.#map.clear();
    this.#bytes = 0;
  }

  #evict(): void {
    for (const [key, e] of this.#map) {
      if (this.#bytes <= this.budget || this.#map.size <= 1) break;
      if (e.bytes === 0) continue; // still decoding
      this.#map.delete(key);
      this.#bytes -= e.bytes;
    }
  }
}

// ----------------------------------------------------------------------------------------- readRegion

function makeSlide(
  path: string,
  format: Slide["format"],
  levels: Level[],
  resolution: SlideMpp | null,
  onClose: () => void,
): Slide {
  let closed = false;
  return {
    path,
    format,
    levels: levels.map((l) => l.info),
    mpp: resolution?.x ?? null,
    resolution,
    readRegion(level, x, y, w, h) {
      if (closed) return Promise.reject(new Error(`Cannot read a region: ${path} is closed`));
      if (!Number.isInteger(level) || level < 0 || level >= levels.length) {
        return Promise.reject(
          new RangeError(
            `Cannot read a region: level is ${level}, ${path} has levels 0..${levels.length - 1}`,
          ),
        );
      }
      if (![x, y, w, h].every(Number.isInteger) || w <= 0 || h <= 0 || w * h > 1 << 28) {
        return Promise.reject(
          new RangeError(
            `Cannot read a region: x, y, w, h are ${x}, ${y}, ${w}, ${h}; expected integers, ` +
              `0 < w·h ≤ 2^28`,
          ),
        );
      }
      return readRegion(levels[level], x, y, w, h);
    },
    close() {
      if (closed) return;
      closed = true;
      onClose();
    },
  };
}

async function readRegion(lv: Level, x: number, y: number, w: number, h: number): Promise<Region> {
  const { width: W, height: H } = lv.info;
  const out = new Uint8Array(w * h * 3).fill(255);
  // The part inside the level: [x0, x1) × [y0, y1).
  const x0 = Math.max(x, 0), y0 = Math.max(y, 0);
  const x1 = Math.min(x + w, W), y1 = Math.min(y + h, H);
  const outside = x0 !== x || y0 !== y || x1 !== x + w || y1 !== y + h;
  if (x1 <= x0 || y1 <= y0) return { data: out, width: w, height: h, outside };
  const c0 = Math.floor(x0 / lv.tw), c1 = Math.floor((x1 - 1) / lv.tw);
  const r0 = Math.floor(y0 / lv.th), r1 = Math.floor((y1 - 1) / lv.th);
  const jobs: Promise<void>[] = [];
  for (let r = r0; r <= r1; r++) {
    for (let c = c0; c <= c1; c++) {
      jobs.push(
        lv.chunk(r * lv.across + c).then((ch) => {
          // Copy the chunk's overlap with the region, row by row.
          const cx0 = Math.max(x0, c * lv.tw), cx1 = Math.min(x1, (c + 1) * lv.tw);
          const cy0 = Math.max(y0, r * lv.th), cy1 = Math.min(y1, r * lv.th + ch.rows);
          const span = (cx1 - cx0) * 3;
          for (let yy = cy0; yy < cy1; yy++) {
            const from = ((yy - r * lv.th) * ch.width + (cx0 - c * lv.tw)) * 3;
            out.set(ch.data.subarray(from, from + span), ((yy - y) * w + (cx0 - x)) * 3);
          }
        }),
      );
    }
  }
  await Promise.all(jobs);
  return { data: out, width: w, height: h, outside };
}
