/**
 * A PNG writer (8-bit RGB, one IDAT, filter 0) and gene-expression maps drawn with it: spots as filled
 * discs coloured by z-score with the viridis colormap clipped at ±3, a vertical colour bar with its ticks and
 * a label saying what it measures, and text in a 5 × 7 bitmap font (digits, capital and small letters, `µ`,
 * and `-+.,:_=()/%?<>`), horizontal or turned to read upwards.
 *
 * PNG: https://www.w3.org/TR/png/ (signature, IHDR, IDAT = zlib stream of filtered scanlines, IEND; CRC-32
 * over chunk type and data).
 *
 * Viridis (CC0, van der Walt & Smith): matplotlib's 256-entry table rounded to 8 bits, written by
 * `python3 -c "from matplotlib import cm; import numpy as np; b = np.round(cm.get_cmap('viridis')(np.linspace(0, 1, 256))[:, :3] * 255).astype(int); print(''.join('%02x%02x%02x' % tuple(r) for r in b))"`
 * (tests/slide/png_test.ts checks it against matplotlib when installed).
 *
 * @module
 */
import { crc32, deflateSync } from "node:zlib";

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)) >>> 0);
  return out;
}

/**
 * Encode an 8-bit RGB image (`rgb`: height × width × 3, row-major) as PNG bytes.
 *
 * @example
 * ```ts
 * const png = encodePng(2, 1, new Uint8Array([255, 0, 0, 0, 0, 255])); // a red and a blue pixel
 * ```
 */
export function encodePng(width: number, height: number, rgb: Uint8Array): Uint8Array {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(
      `Cannot encode PNG: size must be positive integers, current value is ${width}×${height}`,
    );
  }
  if (rgb.length !== width * height * 3) {
    throw new RangeError(
      `Cannot encode PNG: ${width}×${height} RGB needs ${
        width * height * 3
      } bytes, current value has ${rgb.length}`,
    );
  }
  const ihdr = new Uint8Array(13);
  const hv = new DataView(ihdr.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  ihdr.set([8, 2, 0, 0, 0], 8); // bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace
  // Scanlines: a filter byte (0 = None) then the row.
  const stride = width * 3;
  const raw = new Uint8Array(height * (stride + 1));
  for (let y = 0; y < height; y++) raw.set(rgb.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  const parts = [
    Uint8Array.from(SIGNATURE),
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const VIRIDIS_HEX =
  "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769" +
  "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a" +
  "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85" +
  "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b" +
  "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d" +
  "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e" +
  "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e" +
  "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d" +
  "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88" +
  "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81" +
  "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74" +
  "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863" +
  "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d" +
  "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32" +
  "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a" +
  "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725";

/** Viridis as 256 × RGB bytes (index 0 = dark purple #440154, 255 = yellow #fde725). */
export const VIRIDIS: Uint8Array = Uint8Array.from(
  { length: 768 },
  (_, i) => parseInt(VIRIDIS_HEX.slice(2 * i, 2 * i + 2), 16),
);

/** The viridis colour of `t` ∈ [0, 1] (clipped), as matplotlib's `cmap(t)`: entry `floor(t · 256)`, 1 → 255. */
export function viridis(t: number): [number, number, number] {
  const i = Math.min(255, Math.max(0, Math.floor((Number.isNaN(t) ? 0 : t) * 256)));
  return [VIRIDIS[3 * i], VIRIDIS[3 * i + 1], VIRIDIS[3 * i + 2]];
}

// 5 × 7 glyphs: 7 rows of 5 bits (bit 4 = leftmost column).
const GLYPHS: Record<string, number[]> = {
  "0": [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
  "1": [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
  "2": [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
  "3": [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
  "4": [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
  "5": [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
  "6": [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
  "7": [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
  "8": [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
  "9": [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
  A: [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  B: [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
  C: [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
  D: [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
  E: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
  F: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
  G: [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
  H: [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  I: [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
  J: [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
  K: [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
  L: [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
  M: [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
  N: [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
  O: [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
  P: [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
  Q: [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
  R: [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
  S: [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
  T: [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
  U: [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
  V: [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
  W: [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
  X: [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
  Y: [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
  Z: [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
  " ": [0, 0, 0, 0, 0, 0, 0],
  "-": [0, 0, 0, 0x1f, 0, 0, 0],
  "+": [0, 0x04, 0x04, 0x1f, 0x04, 0x04, 0],
  ".": [0, 0, 0, 0, 0, 0x0c, 0x0c],
  ",": [0, 0, 0, 0, 0x0c, 0x04, 0x08],
  ":": [0, 0x0c, 0x0c, 0, 0x0c, 0x0c, 0],
  _: [0, 0, 0, 0, 0, 0, 0x1f],
  "=": [0, 0, 0x1f, 0, 0x1f, 0, 0],
  "(": [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
  ")": [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
  "/": [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
  "%": [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
  "?": [0x0e, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
  "<": [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
  ">": [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
  // Small letters (the HD44780's 5 × 7 forms) and the micro sign.
  a: [0, 0, 0x0e, 0x01, 0x0f, 0x11, 0x0f],
  b: [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e],
  c: [0, 0, 0x0e, 0x10, 0x10, 0x11, 0x0e],
  d: [0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f],
  e: [0, 0, 0x0e, 0x11, 0x1f, 0x10, 0x0e],
  f: [0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08],
  g: [0, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e],
  h: [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
  i: [0x04, 0, 0x0c, 0x04, 0x04, 0x04, 0x0e],
  j: [0x02, 0, 0x06, 0x02, 0x02, 0x12, 0x0c],
  k: [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
  l: [0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
  m: [0, 0, 0x1a, 0x15, 0x15, 0x11, 0x11],
  n: [0, 0, 0x16, 0x19, 0x11, 0x11, 0x11],
  o: [0, 0, 0x0e, 0x11, 0x11, 0x11, 0x0e],
  p: [0, 0, 0x1e, 0x11, 0x1e, 0x10, 0x10],
  q: [0, 0, 0x0d, 0x13, 0x0f, 0x01, 0x01],
  r: [0, 0, 0x16, 0x19, 0x10, 0x10, 0x10],
  s: [0, 0, 0x0e, 0x10, 0x0e, 0x01, 0x1e],
  t: [0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06],
  u: [0, 0, 0x11, 0x11, 0x11, 0x13, 0x0d],
  v: [0, 0, 0x11, 0x11, 0x11, 0x0a, 0x04],
  w: [0, 0, 0x11, 0x11, 0x15, 0x15, 0x0a],
  x: [0, 0, 0x11, 0x0a, 0x04, 0x0a, 0x11],
  y: [0, 0, 0x11, 0x11, 0x0f, 0x01, 0x0e],
  z: [0, 0, 0x1f, 0x02, 0x04, 0x08, 0x1f],
  "µ": [0, 0, 0x11, 0x11, 0x13, 0x1d, 0x10],
};

/** Width in pixels of `text` drawn by {@linkcode drawText} at `scale` (6 px per character, less the last gap). */
export function textWidth(text: string, scale = 1): number {
  return Math.max(0, text.length * 6 - 1) * scale;
}

/**
 * Draw `text` into an RGB canvas with its top-left corner at (x, y); pixels outside are skipped. Characters
 * without a glyph are drawn as their capital when the font has it, else as `?`. `vertical` turns the text a
 * quarter left, to read upwards (as a colour bar's label): it then fills `7 × textWidth` from (x, y).
 */
export function drawText(
  img: { width: number; height: number; rgb: Uint8Array },
  text: string,
  x: number,
  y: number,
  o: { color?: [number, number, number]; scale?: number; vertical?: boolean } = {},
): void {
  const [r, g, b] = o.color ?? [0, 0, 0];
  const s = o.scale ?? 1;
  const w = textWidth(text, 1);
  [...text].forEach((ch, k) => {
    const glyph = GLYPHS[ch] ?? GLYPHS[ch.toUpperCase()] ?? GLYPHS["?"];
    for (let row = 0; row < 7; row++) {
      for (let col = 0; col < 5; col++) {
        if (!(glyph[row] & (0x10 >> col))) continue;
        // Horizontal: (k·6 + col, row); turned: row goes right, the text runs from the bottom up.
        const [u, v] = o.vertical ? [row, w - 1 - (k * 6 + col)] : [k * 6 + col, row];
        for (let dy = 0; dy < s; dy++) {
          for (let dx = 0; dx < s; dx++) {
            const px = x + u * s + dx, py = y + v * s + dy;
            if (px < 0 || py < 0 || px >= img.width || py >= img.height) continue;
            const i = 3 * (py * img.width + px);
            img.rgb[i] = r;
            img.rgb[i + 1] = g;
            img.rgb[i + 2] = b;
          }
        }
      }
    }
  });
}

/** Options of {@linkcode geneMapPng}. */
export interface GeneMapOptions {
  /** Spot centres: array grid positions or pixel coordinates (any scale; the map is fitted to the canvas). */
  spots: { x: number; y: number }[];
  /** One value per spot (e.g. predicted log expression); NaN spots are drawn grey. */
  values: ArrayLike<number>;
  /** A title above the map (5 × 7 font, drawn at twice the size). */
  title?: string;
  /** Side of the square map area in pixels (default 512); the colour bar and margins are added around it. */
  size?: number;
  /** Disc radius in pixels (default: 0.45 × the smallest spacing between spots, at least 1). */
  radius?: number;
  /** Tumour spots get a red ring around their disc, explained in a legend under the map. */
  tumor?: boolean[];
  /** The legend of the red rings (default "tumour"), e.g. "tumour predicted (p > 0.5)". */
  tumorLegend?: string;
  /** The colour bar's label (default "z-score"), e.g. "z-score of log1p expression". */
  barLabel?: string;
}

const MARGIN = 12, BAR_W = 16, BAR_GAP = 16, LABEL_W = 30, CLIP = 3, LEGEND_H = 7 + 8;
const NAN_GREY: [number, number, number] = [190, 190, 190];
const RING: [number, number, number] = [228, 26, 28];

/** z-scores of `values` (population std over the finite values); constant values give 0, NaN stays NaN. */
export function zScores(values: ArrayLike<number>): Float64Array {
  let n = 0, s = 0;
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i])) {
      s += values[i];
      n++;
    }
  }
  const mean = n ? s / n : 0;
  let ss = 0;
  for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) ss += (values[i] - mean) ** 2;
  const sd = n ? Math.sqrt(ss / n) : 0;
  return Float64Array.from(
    values as ArrayLike<number>,
    (v) => Number.isFinite(v) ? (sd > 0 ? (v - mean) / sd : 0) : NaN,
  );
}

/**
 * The label of a colour bar of height `h` whose top-left is (x, y), turned to read upwards and centred on
 * the bar, `gap` px right of it (beside its tick labels): `label` when the bar is tall enough, else `short`,
 * else none.
 *
 * @example
 * ```ts
 * const img = { width: 80, height: 240, rgb: new Uint8Array(80 * 240 * 3).fill(255) };
 * drawBarLabel(img, { x: 10, y: 10, h: 200, gap: 36 }, "tumour probability", "tumour p");
 * ```
 */
export function drawBarLabel(
  img: { width: number; height: number; rgb: Uint8Array },
  at: { x: number; y: number; h: number; gap: number },
  label: string,
  short?: string,
): void {
  const text = [label, short].find((t) => t !== undefined && textWidth(t) <= at.h);
  if (text === undefined) return;
  drawText(img, text, at.x + at.gap, at.y + Math.floor((at.h - textWidth(text)) / 2), { vertical: true });
}

/**
 * Draw a gene map: spots as filled discs coloured by their z-score through viridis (clipped at ±3, so
 * −3 is #440154 and +3 is #fde725), a vertical colour bar with ticks −3 / 0 / +3 and its label (`barLabel`,
 * default "z-score"), an optional title, and red rings around tumour spots with a legend under the map
 * (`tumorLegend`). Image y grows downwards, as pixel coordinates of a slide.
 *
 * @example
 * ```ts
 * const png = geneMapPng({ spots: [{ x: 0, y: 0 }, { x: 1, y: 0 }], values: new Float32Array([1, 2]), title: "ERBB2" });
 * await Deno.writeFile("ERBB2.png", png);
 * ```
 */
export function geneMapPng(o: GeneMapOptions): Uint8Array {
  const n = o.spots.length;
  if (o.values.length !== n) {
    throw new RangeError(`Cannot draw a gene map: ${n} spots, but ${o.values.length} values`);
  }
  if (o.tumor && o.tumor.length !== n) {
    throw new RangeError(`Cannot draw a gene map: ${n} spots, but ${o.tumor.length} tumour flags`);
  }
  const size = o.size ?? 512;
  if (!(size >= 16)) {
    throw new RangeError(`Cannot draw a gene map: size must be ≥ 16, current value is ${size}`);
  }
  const titleH = o.title ? 7 * 2 + MARGIN : 0;
  const legendH = o.tumor ? LEGEND_H : 0;
  const width = MARGIN + size + BAR_GAP + BAR_W + 4 + LABEL_W + MARGIN;
  const height = MARGIN + titleH + size + legendH + MARGIN;
  const rgb = new Uint8Array(width * height * 3).fill(255);
  const img = { width, height, rgb };
  const put = (px: number, py: number, c: readonly number[]) => {
    const i = 3 * (py * width + px);
    rgb[i] = c[0];
    rgb[i + 1] = c[1];
    rgb[i + 2] = c[2];
  };
  const top = MARGIN + titleH;

  // Fit the spots' bounding box (padded by one radius) into the square, aspect kept, centred.
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const p of o.spots) {
    x0 = Math.min(x0, p.x), x1 = Math.max(x1, p.x), y0 = Math.min(y0, p.y), y1 = Math.max(y1, p.y);
  }
  const spacing = minSpacing(o.spots); // in input units; Infinity for < 2 spots
  const span = Math.max(x1 - x0, y1 - y0);
  // Radius in input units: 0.45 of the spacing; pad the box by it so edge discs stay inside.
  const rIn = Number.isFinite(spacing) ? 0.45 * spacing : Math.max(span, 1) * 0.05;
  const scale = n ? size / (span + 2 * rIn || 1) : 1;
  const radius = o.radius ?? Math.max(1, rIn * scale);
  const ox = MARGIN + (size - (x1 - x0) * scale) / 2, oy = top + (size - (y1 - y0) * scale) / 2;

  const z = zScores(o.values);
  const color = (zi: number) =>
    Number.isNaN(zi) ? NAN_GREY : viridis((Math.max(-CLIP, Math.min(CLIP, zi)) + CLIP) / (2 * CLIP));
  for (let i = 0; i < n; i++) {
    const cx = ox + (o.spots[i].x - x0) * scale, cy = oy + (o.spots[i].y - y0) * scale;
    const ring = o.tumor?.[i] ? Math.max(1, radius * 0.2) : 0;
    const outer = radius + ring;
    const c = color(z[i]);
    for (
      let py = Math.max(top, Math.floor(cy - outer));
      py <= Math.min(top + size - 1, Math.ceil(cy + outer));
      py++
    ) {
      for (
        let px = Math.max(MARGIN, Math.floor(cx - outer));
        px <= Math.min(MARGIN + size - 1, Math.ceil(cx + outer));
        px++
      ) {
        // Pixel centres at +0.5.
        const d2 = (px + 0.5 - cx) ** 2 + (py + 0.5 - cy) ** 2;
        if (d2 <= radius * radius) put(px, py, c);
        else if (ring && d2 <= outer * outer) put(px, py, RING);
      }
    }
  }

  // Colour bar: top row = +3 (entry 255), bottom row = −3 (entry 0).
  const bx = MARGIN + size + BAR_GAP;
  for (let py = 0; py < size; py++) {
    const c = viridis(1 - py / (size - 1));
    for (let px = 0; px < BAR_W; px++) put(bx + px, top + py, c);
  }
  const lx = bx + BAR_W + 4;
  drawText(img, "+3", lx, top);
  drawText(img, "0", lx, top + Math.round(size / 2) - 3);
  drawText(img, "-3", lx, top + size - 7);
  drawBarLabel(img, { x: lx, y: top, h: size, gap: 16 }, o.barLabel ?? "z-score", "z-score");
  if (o.title) drawText(img, o.title, MARGIN, MARGIN, { scale: 2 });
  if (o.tumor) {
    // The legend: a ringed grey disc, then what the rings mean.
    const cy = top + size + 8 + 3, cx = MARGIN + 5, r = 3.5;
    for (let py = cy - 6; py <= cy + 6; py++) {
      for (let px = cx - 6; px <= cx + 6; px++) {
        const d2 = (px + 0.5 - cx) ** 2 + (py + 0.5 - cy) ** 2;
        if (d2 <= r * r) put(px, py, NAN_GREY);
        else if (d2 <= (r + 1.5) ** 2) put(px, py, RING);
      }
    }
    drawText(img, `red ring: ${o.tumorLegend ?? "tumour"}`, MARGIN + 14, cy - 3);
  }
  return encodePng(width, height, rgb);
}

// The smallest distance between two spots (a sweep over x-sorted spots; fine for tens of thousands).
function minSpacing(spots: { x: number; y: number }[]): number {
  const s = spots.slice().sort((a, b) => a.x - b.x);
  let best = Infinity;
  for (let i = 0; i < s.length; i++) {
    for (let j = i + 1; j < s.length && s[j].x - s[i].x < best; j++) {
      const d = Math.hypot(s[j].x - s[i].x, s[j].y - s[i].y);
      if (d > 0 && d < best) best = d;
    }
  }
  return best;
}
