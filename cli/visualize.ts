/**
 * `he2gene visualize PRED --gene FASN[,ERBB2,…] [--slide SLIDE] [--truth FILE.npz] [--out map.png]`: a PNG of
 * predicted expression at the spots or tiles of one section.
 *
 * Each gene gets a panel: the spots as discs coloured by the z-score of the gene's log1p expression over the
 * spots (viridis, clipped at ±3, as slide/png.ts's `geneMapPng`), a colour bar labelled "z-score of log1p
 * expression", and — over a thumbnail of the slide when `--slide` is given (the region holding the spots,
 * downsampled to about `--size` px) — a scale bar in µm (in mm from 1 mm up) when the slide's resolution
 * (or `--mpp`) is known. With `--truth` the measured expression is drawn beside each prediction (z-scored
 * on its own) and the Pearson r between the two is in the title. A last row shows the tumour probability
 * (bar "tumour probability"; and the measured tumour labels when the truth has them). Several genes make
 * one row each.
 *
 * Predictions: `predictions.npz` of `predict-slide` (spots placed by `pixel`, level-0 pixels) or of
 * `predict-patches` (no `pixel`: placed by `grid`, else by the `{section}_{x}_{y}` names; no slide then).
 * Truth: an npz as `evaluate` reads it (`he2gene truth` writes one): `target` or `counts` [P, G], `names`
 * [P], `genes` [G], optional `tumor` [P]; joined on spot names, `{section}_{x}_{y}`, her2st's `{x}x{y}` ids
 * accepted too (cli/truth.ts); `--log1p` for raw counts.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { pearsonPerGene } from "../model/metrics.ts";
import { type NpyArray, readNpz, toNumbers } from "../slide/npy.ts";
import { writeAtomic } from "../slide/npz.ts";
import { drawBarLabel, drawText, encodePng, textWidth, viridis, zScores } from "../slide/png.ts";
import { openSlide } from "../slide/wsi.ts";
import { type RegionThumbnail, slideThumbnail } from "./predict_slide.ts";
import { checkInputs, checkInterrupt, UsageError } from "./errors.ts";
import { canonicalSpotNames } from "./truth.ts";

type Rgb = readonly [number, number, number];

/** An RGB canvas (`rgb`: height × width × 3). */
export interface Canvas {
  width: number;
  height: number;
  rgb: Uint8Array;
}

/** A white canvas. */
export function canvas(width: number, height: number, fill: Rgb = [255, 255, 255]): Canvas {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) rgb.set(fill, 3 * i);
  return { width, height, rgb };
}

/** Fill the rectangle `[x, x + w) × [y, y + h)` (clipped). */
export function fillRect(c: Canvas, x: number, y: number, w: number, h: number, color: Rgb): void {
  for (let py = Math.max(0, y); py < Math.min(c.height, y + h); py++) {
    for (let px = Math.max(0, x); px < Math.min(c.width, x + w); px++) {
      c.rgb.set(color, 3 * (py * c.width + px));
    }
  }
}

/** Copy `src` into `dst` with its top-left at (x, y) (clipped). */
export function blit(dst: Canvas, src: Canvas, x: number, y: number): void {
  for (let sy = 0; sy < src.height; sy++) {
    const dy = y + sy;
    if (dy < 0 || dy >= dst.height) continue;
    const x0 = Math.max(0, -x), x1 = Math.min(src.width, dst.width - x);
    if (x1 <= x0) continue;
    dst.rgb.set(
      src.rgb.subarray(3 * (sy * src.width + x0), 3 * (sy * src.width + x1)),
      3 * (dy * dst.width + x + x0),
    );
  }
}

/** A filled disc centred at (cx, cy) (pixel centres at +0.5), clipped to the rectangle `clip`. */
export function disc(
  c: Canvas,
  cx: number,
  cy: number,
  r: number,
  color: Rgb,
  clip: [number, number, number, number] = [0, 0, c.width, c.height],
): void {
  const [x0, y0, x1, y1] = clip;
  for (let py = Math.max(y0, Math.floor(cy - r)); py <= Math.min(y1 - 1, Math.ceil(cy + r)); py++) {
    for (let px = Math.max(x0, Math.floor(cx - r)); px <= Math.min(x1 - 1, Math.ceil(cx + r)); px++) {
      if ((px + 0.5 - cx) ** 2 + (py + 0.5 - cy) ** 2 <= r * r) c.rgb.set(color, 3 * (py * c.width + px));
    }
  }
}

// LABEL_W: the tick labels (≤ 3 characters, 17 px), then the bar's label turned upwards (7 px) at BAR_LABEL_GAP.
const CLIP = 3, MARGIN = 12, TITLE_H = 14 + 10, BAR_GAP = 12, BAR_W = 16, LABEL_W = 34, BAR_LABEL_GAP = 22;
const NAN_GREY: Rgb = [190, 190, 190];

/** The colour of a z-score: viridis over [−3, 3], clipped; NaN grey. */
export function zColor(z: number): Rgb {
  return Number.isNaN(z) ? NAN_GREY : viridis((Math.max(-CLIP, Math.min(CLIP, z)) + CLIP) / (2 * CLIP));
}

/** Tumour probability in [0, 1] → blue (0), light grey (0.5), red (1) (matplotlib's coolwarm ends). */
export function tumorColor(p: number): Rgb {
  if (Number.isNaN(p)) return NAN_GREY;
  const t = Math.max(0, Math.min(1, p));
  const [a, b, u] = t < 0.5 ? [[59, 76, 192], [221, 221, 221], t * 2] as const : [
    [221, 221, 221],
    [180, 4, 38],
    t * 2 - 1,
  ] as const;
  return [0, 1, 2].map((i) => Math.round(a[i] + (b[i] - a[i]) * u)) as unknown as Rgb;
}

/** A "nice" scale-bar length in mm (1, 2 or 5 × 10^k) close to `targetMm`. */
export function niceMm(targetMm: number): number {
  const e = Math.floor(Math.log10(targetMm));
  const base = targetMm / 10 ** e;
  const m = base >= 5 ? 5 : base >= 2 ? 2 : 1;
  return m * 10 ** e;
}

/** A scale bar's label: `500 µm` below 1 mm, `2 mm` from 1 mm up. */
export function scaleBarLabel(mm: number): string {
  return mm >= 1 ? `${mm} mm` : `${Math.round(mm * 1000)} µm`;
}

/** Where spots go in a map: canvas-free map coordinates (0…mw, 0…mh) and the disc radius. */
interface MapGeometry {
  mw: number;
  mh: number;
  /** Spot centres in map pixels. */
  xy: Float64Array;
  radius: number;
  background?: RegionThumbnail;
  /** Map pixels per mm, when known. */
  pxPerMm?: number;
}

function minSpacing(xy: Float64Array): number {
  const n = xy.length / 2;
  const idx = Array.from({ length: n }, (_, i) => i).sort((a, b) => xy[2 * a] - xy[2 * b]);
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const a = idx[i];
    for (let j = i + 1; j < n && xy[2 * idx[j]] - xy[2 * a] < best; j++) {
      const b = idx[j];
      const d = Math.hypot(xy[2 * b] - xy[2 * a], xy[2 * b + 1] - xy[2 * a + 1]);
      if (d > 0 && d < best) best = d;
    }
  }
  return best;
}

function bbox(xy: Float64Array): [number, number, number, number] {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (let i = 0; i < xy.length; i += 2) {
    x0 = Math.min(x0, xy[i]), x1 = Math.max(x1, xy[i]);
    y0 = Math.min(y0, xy[i + 1]), y1 = Math.max(y1, xy[i + 1]);
  }
  return [x0, y0, x1, y1];
}

/** Predictions as `visualize` reads them. */
interface PredTable {
  names: string[];
  genes: Map<string, { values: Float32Array; stride: number; col: number }>;
  tumor?: Float32Array;
  /** Level-0 pixel centres [P, 2], when the predictions carry them. */
  pixel?: Float64Array;
  /** Grid positions [P, 2]. */
  grid?: Float64Array;
}

function strs(a: NpyArray | undefined, file: string, key: string): string[] {
  if (!a || a.dtype !== "U" || a.shape.length !== 1) {
    throw new Error(`${file}: expected a 1-D string array "${key}"`);
  }
  return a.data;
}

function mat(a: NpyArray | undefined, file: string, key: string, rows: number, cols: number): Float32Array {
  if (!a || a.dtype === "U" || a.shape.length !== 2 || a.shape[0] !== rows || a.shape[1] !== cols) {
    throw new Error(
      `${file}: expected "${key}" of shape [${rows}, ${cols}], found ${
        a ? `[${a.shape}] ${a.dtype}` : "none"
      }`,
    );
  }
  return a.dtype === "f4" ? a.data : Float32Array.from(toNumbers(a, key));
}

async function readPred(path: string): Promise<PredTable> {
  const z = await readNpz(path);
  const names = strs(z.names, path, "names");
  const P = names.length;
  const genes: PredTable["genes"] = new Map();
  for (const [k, gk] of [["aux", "aux_genes"], ["target", "target_genes"]] as const) {
    if (!z[k]) continue;
    const g = strs(z[gk], path, gk);
    const values = mat(z[k], path, k, P, g.length);
    g.forEach((name, col) => genes.set(name, { values, stride: g.length, col })); // target wins over aux
  }
  if (genes.size === 0) throw new Error(`${path}: no "target" or "aux" array`);
  const t: PredTable = { names, genes };
  if (z.tumor_prob) t.tumor = Float32Array.from(toNumbers(z.tumor_prob, "tumor_prob"));
  for (const k of ["pixel", "grid"] as const) {
    const a = z[k];
    if (!a) continue;
    if (a.dtype === "U" || a.shape.length !== 2 || a.shape[0] !== P || a.shape[1] !== 2) {
      throw new Error(`${path}: expected "${k}" of shape [${P}, 2], found [${a.shape}] ${a.dtype}`);
    }
    t[k] = toNumbers(a, k);
  }
  if (!t.grid) {
    // predict-patches: names are {section}_{x}_{y}.
    const xy = names.map((n) => n.split("_").slice(-2).map(Number));
    if (xy.every((p) => p.length === 2 && p.every(Number.isFinite))) t.grid = Float64Array.from(xy.flat());
  }
  return t;
}

interface Truth {
  names: string[];
  genes: string[];
  values: Float32Array;
  tumor?: Float32Array;
}

async function readTruth(path: string, log1p: boolean): Promise<Truth> {
  const z = await readNpz(path);
  const key = z.target ? "target" : z.counts ? "counts" : null;
  if (!key) throw new Error(`${path}: no array "target" or "counts" (found ${Object.keys(z).join(", ")})`);
  const names = strs(z.names, path, "names"), genes = strs(z.genes, path, "genes");
  const values = Float32Array.from(mat(z[key], path, key, names.length, genes.length));
  if (log1p) { for (let i = 0; i < values.length; i++) values[i] = Math.log1p(values[i]); }
  const t: Truth = { names, genes, values };
  if (z.tumor) t.tumor = Float32Array.from(toNumbers(z.tumor, "tumor"));
  return t;
}

/** Options of {@linkcode visualize}. */
export interface VisualizeOptions {
  genes: string[];
  out: string;
  slide?: string;
  truth?: string;
  log1p?: boolean;
  /** Long side of each map in pixels (default 1024 for one gene, 512 for several). */
  size?: number;
  /** Microns per pixel at level 0 (overrides the slide's; enables the scale bar). */
  mpp?: number;
}

/** What {@linkcode visualize} drew. */
export interface VisualizeResult {
  width: number;
  height: number;
  /** Pearson r per gene (NaN without truth). */
  r: number[];
  /** Spot centres in the first panel, in image pixels, and the disc radius. */
  spots: Float64Array;
  radius: number;
}

/**
 * Draw the gene maps of `pred` (see the module doc) into one PNG at `o.out`.
 *
 * @example
 * ```ts
 * await visualize("out/predictions.npz", { genes: ["FASN"], slide: "C2.jpg", out: "FASN.png" });
 * ```
 */
export async function visualize(pred: string, o: VisualizeOptions): Promise<VisualizeResult> {
  const p = await readPred(pred);
  const P = p.names.length;
  if (P === 0) throw new Error(`${pred}: no spots`);
  for (const g of o.genes) {
    if (!p.genes.has(g)) {
      const some = [...p.genes.keys()].slice(0, 8).join(", ");
      throw new Error(`${pred}: no gene "${g}" among the ${p.genes.size} predicted (${some}, …)`);
    }
  }
  const truth = o.truth ? await readTruth(o.truth, o.log1p ?? false) : undefined;
  const size = o.size ?? (o.genes.length > 1 ? 512 : 1024);
  if (!Number.isInteger(size) || size < 32) {
    throw new RangeError(`The map size must be an integer ≥ 32, current value is ${size}`);
  }

  // Geometry: over the slide (pixel coordinates), else fitted (pixel or grid coordinates).
  let geo: MapGeometry;
  if (o.slide) {
    if (!p.pixel) {
      throw new Error(
        `${pred} has no pixel coordinates ("pixel", written by predict-slide), so it cannot be drawn over a slide`,
      );
    }
    const slide = await openSlide(o.slide, o.mpp ? { mpp: o.mpp } : {});
    try {
      const [W0, H0] = [slide.levels[0].width, slide.levels[0].height];
      const sp = minSpacing(p.pixel);
      let [x0, y0, x1, y1] = bbox(p.pixel);
      const pad = Number.isFinite(sp) ? sp : Math.max(x1 - x0, y1 - y0, 100) * 0.1;
      x0 = Math.max(0, Math.floor(x0 - pad)), y0 = Math.max(0, Math.floor(y0 - pad));
      x1 = Math.min(W0, Math.ceil(x1 + pad)), y1 = Math.min(H0, Math.ceil(y1 + pad));
      if (x1 <= x0 || y1 <= y0) throw new Error(`The spots of ${pred} fall outside ${o.slide} (${W0}×${H0})`);
      const thumb = await slideThumbnail(slide, {
        downsample: Math.max(x1 - x0, y1 - y0) / size,
        region: [x0, y0, x1 - x0, y1 - y0],
      });
      const xy = new Float64Array(2 * P);
      for (let i = 0; i < P; i++) {
        xy[2 * i] = (p.pixel[2 * i] - thumb.x0) / thumb.downsample;
        xy[2 * i + 1] = (p.pixel[2 * i + 1] - thumb.y0) / thumb.downsample;
      }
      geo = {
        mw: thumb.width,
        mh: thumb.height,
        xy,
        radius: Math.max(1, (Number.isFinite(sp) ? 0.45 * sp : pad * 0.45) / thumb.downsample),
        background: thumb,
        pxPerMm: slide.mpp ? 1000 / slide.mpp / thumb.downsample : undefined,
      };
    } finally {
      slide.close();
    }
  } else {
    const src = p.pixel ?? p.grid;
    if (!src) {
      throw new Error(`${pred} has no pixel or grid coordinates and its names are not {section}_{x}_{y}`);
    }
    const sp = minSpacing(src);
    const [x0, y0, x1, y1] = bbox(src);
    const rIn = Number.isFinite(sp) ? 0.45 * sp : Math.max(x1 - x0, y1 - y0, 1) * 0.05;
    const spanX = x1 - x0 + 2 * rIn, spanY = y1 - y0 + 2 * rIn;
    const s = size / Math.max(spanX, spanY);
    const xy = new Float64Array(2 * P);
    for (let i = 0; i < P; i++) {
      xy[2 * i] = (src[2 * i] - x0 + rIn) * s;
      xy[2 * i + 1] = (src[2 * i + 1] - y0 + rIn) * s;
    }
    geo = {
      mw: Math.max(1, Math.round(spanX * s)),
      mh: Math.max(1, Math.round(spanY * s)),
      xy,
      radius: Math.max(1, rIn * s),
      pxPerMm: p.pixel && o.mpp ? (1000 / o.mpp) * s : undefined,
    };
  }

  // Join the truth on names (either spot naming, cli/truth.ts).
  const tIndex = truth ? new Map(canonicalSpotNames(truth.names, p.names).map((n, i) => [n, i])) : undefined;
  const tRow = canonicalSpotNames(p.names, truth?.names ?? []).map((n) => tIndex?.get(n) ?? -1);
  if (truth && tRow.every((i) => i < 0)) {
    throw new Error(
      `No spot of ${pred} is in ${o.truth} (e.g. ${p.names[0]} vs ${truth.names[0]}): different sections?`,
    );
  }

  // Panels: one row per gene (prediction | truth), then the tumour row.
  const cols = truth ? 2 : 1;
  const panelW = MARGIN + geo.mw + BAR_GAP + BAR_W + 4 + LABEL_W + MARGIN;
  const panelH = MARGIN + TITLE_H + geo.mh + MARGIN;
  const tumorRow = p.tumor !== undefined;
  const rows = o.genes.length + (tumorRow ? 1 : 0);
  const img = canvas(cols * panelW, rows * panelH);
  const rs: number[] = [];
  let firstSpots = new Float64Array(0);

  const panel = (row: number, col: number, title: string, colors: Rgb[], bar: "z" | "p") => {
    const ox = col * panelW + MARGIN, oy = row * panelH + MARGIN + TITLE_H;
    if (geo.background) {
      const b = geo.background;
      blit(img, { width: b.width, height: b.height, rgb: b.data }, ox, oy);
    } else fillRect(img, ox, oy, geo.mw, geo.mh, [245, 245, 245]);
    const clip: [number, number, number, number] = [ox, oy, ox + geo.mw, oy + geo.mh];
    const spots = new Float64Array(2 * P);
    for (let i = 0; i < P; i++) {
      spots[2 * i] = ox + geo.xy[2 * i];
      spots[2 * i + 1] = oy + geo.xy[2 * i + 1];
      disc(img, spots[2 * i], spots[2 * i + 1], geo.radius, colors[i], clip);
    }
    if (row === 0 && col === 0) firstSpots = spots;
    drawText(img, title, col * panelW + MARGIN, row * panelH + MARGIN, { scale: 2 });
    colorBar(img, ox + geo.mw + BAR_GAP, oy, geo.mh, bar);
    if (geo.pxPerMm) scaleBar(img, ox, oy, geo.mw, geo.mh, geo.pxPerMm);
  };

  checkInterrupt();
  o.genes.forEach((g, row) => {
    const { values, stride, col } = p.genes.get(g)!;
    const pv = Float32Array.from({ length: P }, (_, i) => values[i * stride + col]);
    let r = NaN;
    let title = `${g} predicted`;
    if (truth) {
      const tg = truth.genes.indexOf(g);
      const tv = Float32Array.from(
        { length: P },
        (_, i) => (tg >= 0 && tRow[i] >= 0 ? truth.values[tRow[i] * truth.genes.length + tg] : NaN),
      );
      const keep = tRow.map((_, i) => i).filter((i) => Number.isFinite(tv[i]) && Number.isFinite(pv[i]));
      if (keep.length >= 2) {
        r = pearsonPerGene(
          Float32Array.from(keep, (i) => pv[i]),
          Float32Array.from(keep, (i) => tv[i]),
          keep.length,
          1,
        )[0];
      }
      title += `  r = ${Number.isNaN(r) ? "n/a" : r.toFixed(2)}`;
      const tz = zScores(tv);
      panel(row, 1, tg >= 0 ? `${g} measured` : `${g} not measured`, Array.from(tz, zColor), "z");
    }
    rs.push(r);
    panel(row, 0, title, Array.from(zScores(pv), zColor), "z");
  });
  if (tumorRow) {
    const row = o.genes.length;
    panel(row, 0, "tumour predicted", Array.from(p.tumor!, tumorColor), "p");
    if (truth?.tumor) {
      const tt = Array.from({ length: P }, (_, i) => (tRow[i] >= 0 ? truth.tumor![tRow[i]] : NaN));
      panel(row, 1, "tumour measured", tt.map(tumorColor), "p");
    }
  }
  const png = encodePng(img.width, img.height, img.rgb);
  checkInterrupt();
  try {
    await writeAtomic(o.out, png);
  } catch (e) {
    throw new Error(`Cannot write ${o.out}: ${(e as Error).message}`);
  }
  return { width: img.width, height: img.height, r: rs, spots: firstSpots, radius: geo.radius };
}

// Vertical colour bar, top = high: z over [−3, 3] or probability over [0, 1].
function colorBar(img: Canvas, x: number, y: number, h: number, kind: "z" | "p"): void {
  for (let py = 0; py < h; py++) {
    const t = 1 - py / Math.max(1, h - 1);
    fillRect(img, x, y + py, BAR_W, 1, kind === "z" ? viridis(t) : tumorColor(t));
  }
  const lx = x + BAR_W + 4;
  const [hi, mid, lo] = kind === "z" ? ["+3", "0", "-3"] : ["1", "0.5", "0"];
  drawText(img, hi, lx, y);
  drawText(img, mid, lx, y + Math.round(h / 2) - 3);
  drawText(img, lo, lx, y + h - 7);
  // What the bar measures, turned upwards beside the ticks (so it does not read as a tick).
  const [label, short] = kind === "z"
    ? ["z-score of log1p expression", "z-score"]
    : ["tumour probability", "p(tumour)"];
  drawBarLabel(img, { x: lx, y, h, gap: BAR_LABEL_GAP }, label, short);
}

// A scale bar of a nice length near a fifth of the map width, bottom-left, on a white box.
function scaleBar(img: Canvas, x: number, y: number, w: number, h: number, pxPerMm: number): void {
  const mm = niceMm((w / 5) / pxPerMm);
  const len = Math.round(mm * pxPerMm);
  if (len < 4 || len > w - 16) return;
  const label = scaleBarLabel(mm);
  const bw = Math.max(len, textWidth(label)) + 12, bh = 7 + 4 + 4 + 12;
  const bx = x + 6, by = y + h - bh - 6;
  fillRect(img, bx, by, bw, bh, [255, 255, 255]);
  drawText(img, label, bx + 6, by + 5);
  fillRect(img, bx + 6, by + 5 + 7 + 4, len, 4, [0, 0, 0]);
}

/** Usage of `visualize` (for cli/main.ts). */
export const VISUALIZE_USAGE =
  "visualize PRED --gene GENE[,GENE…] [--slide SLIDE] [--truth FILE.npz] [--log1p] [--out map.png]\n" +
  "       [--size PX] [--mpp MPP]\n\n" +
  "  PRED     predictions.npz (predict-slide: placed by pixel; predict-patches: by grid / names) or its folder\n" +
  "  --gene   one or more genes (comma-separated: one row of maps each)\n" +
  "  --slide  draw over a thumbnail of this slide (needs predict-slide's pixel coordinates), with a scale bar\n" +
  "           in µm (in mm from 1 mm up) when its resolution (or --mpp) is known\n" +
  "  --truth  npz with target or counts [P, G], names, genes, optional tumor (he2gene truth writes one):\n" +
  "           drawn beside, Pearson r in the title (--log1p for raw counts); spots {section}_{x}_{y} or\n" +
  "           her2st's {x}x{y}\n" +
  "  Maps: spots coloured by the z-score of each gene's log1p expression over the spots (viridis, ±3);\n" +
  "  a last row of tumour probability (blue 0, grey 0.5, red 1) when the predictions have it\n" +
  "  --out    PNG (default: map.png beside the predictions)\n" +
  "  --size   long side of each map in pixels (default 1024 for one gene, 512 for several)\n" +
  "  --mpp    microns per pixel at level 0 (overrides the slide's)";

/** CLI entry: parse arguments and run. */
export async function runVisualize(args: string[]): Promise<void> {
  const { values: v, positionals } = parseArgs({
    args,
    options: {
      gene: { type: "string" },
      slide: { type: "string" },
      truth: { type: "string" },
      log1p: { type: "boolean", default: false },
      out: { type: "string" },
      size: { type: "string" },
      mpp: { type: "string" },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError("expected one PRED (predictions.npz or its folder)");
  if (!v.gene) throw new UsageError("--gene GENE[,GENE…] is required");
  const genes = v.gene.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (genes.length === 0) throw new UsageError("--gene names no gene");
  const size = v.size === undefined ? undefined : Number(v.size);
  if (size !== undefined && !(Number.isInteger(size) && size >= 32)) {
    throw new UsageError(`--size must be an integer ≥ 32, current value is ${v.size}`);
  }
  const mpp = v.mpp === undefined ? undefined : Number(v.mpp);
  if (mpp !== undefined && !(mpp > 0)) {
    throw new UsageError(`--mpp must be positive, current value is ${v.mpp}`);
  }
  let pred = positionals[0];
  await checkInputs([
    ["the predictions", pred, "file or folder"],
    ["--slide", v.slide, "file"],
    ["--truth", v.truth, "file"],
  ]);
  try {
    if ((await Deno.stat(pred)).isDirectory) pred = join(pred, "predictions.npz");
  } catch (e) {
    throw new Error(`Cannot read the predictions ${pred}: ${(e as Error).message}`);
  }
  const out = v.out ?? join(dirname(pred), "map.png");
  const res = await visualize(pred, {
    genes,
    out,
    slide: v.slide,
    truth: v.truth,
    log1p: v.log1p,
    size,
    mpp,
  });
  const rs = v.truth ? ` (Pearson r: ${genes.map((g, i) => `${g} ${res.r[i].toFixed(3)}`).join(", ")})` : "";
  console.log(`${res.width}×${res.height} map of ${genes.join(", ")} → ${out}${rs}`);
}
