/**
 * Slide prediction as a library: an opened {@linkcode Slide} and the squares to predict (spots or tissue
 * tiles, see {@linkcode spotPatches} and {@linkcode tilePatches}) in, {@linkcode SlidePredictions} out,
 * and the output encoders (CSV text, NPZ bytes, h5ad bytes, GeoJSON bytes) as pure functions of them. No
 * files, no terminal: progress and warnings go through callbacks, cancellation through an `AbortSignal`.
 *
 * Patches are read from the slide in batches (the next batch is read while the GPU works on the current
 * one; never all at once), optionally stain-normalised on the GPU, resized to 224 and normalised as the
 * original, and predicted with the TTA views of `views.ts` (`grid` modes read 1.5× the patch of context
 * around it from the slide).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { PredictModel } from "../model/mod.ts";
import type { RgbImage } from "../slide/decode.ts";
import type { StainMethod } from "../slide/stain.ts";
import { centerBox, resizeCpu } from "../slide/resample.ts";
import { type SlideThumbnail, tissueTiles } from "../slide/tissue.ts";
import type { Slide } from "../slide/wsi.ts";
import { CsvBuilder, csvTable, encodeNpz } from "../slide/npz.ts";
import { encodeH5ad, type SpatialLibrary, spatialUns, type UnsValue } from "../slide/h5ad.ts";
import { predictionsGeoJson } from "../slide/geojson.ts";
import type { SpotRow } from "../slide/spots.ts";
import type { PatchPredictions } from "./predict_patches.ts";
import { predictViews, type StainTarget, type Tta } from "./views.ts";

/** One spot or tile: its name, grid position, level-0 centre and the level-0 square it is predicted from. */
export interface SlidePatch {
  name: string;
  /** Array x, y (spots) or tile col, row. */
  gx: number;
  gy: number;
  /** Level-0 centre. */
  px: number;
  py: number;
  /** Level-0 top-left of the patch and its side. */
  left: number;
  top: number;
  size: number;
}

/** Predictions at the patches of a slide, on the host. */
export interface SlidePredictions extends PatchPredictions {
  /** (P, 2) level-0 centre x, y */
  pixel: Float64Array;
  /** (P, 2) array x, y or tile col, row */
  grid: Int32Array;
  /** (P, 2) level-0 top-left x, y of each patch square */
  topLeft: Float64Array;
  /** "spots" or "tiles" */
  mode: "spots" | "tiles";
  /** Patch side in level-0 pixels. */
  patchPx: number;
  /** The slide's path or file name (the h5ad files keep its file name). */
  slide: string;
  /** The name prefix of the spots or tiles. */
  section: string;
  /** The checkpoint's path or file name (the h5ad files keep its file name). */
  weights: string;
  tta: Tta;
  mpp: number | null;
}

/**
 * The stages a `timings` record reports, in milliseconds of wall clock on the main loop (they do not
 * overlap, so their sum is about the whole run's time):
 * - `open`: opening the slide (for a JPEG or PNG, the decode of the whole image; the caller's);
 * - `setup`: the spot file or the tissue tiling, the engine, the checkpoint read and upload, gene names
 *   (the caller's);
 * - `read`: waiting for a batch's patches from the slide; the next batch is read while the GPU works on
 *   the current one, so only the part that is not hidden is counted (`readBusy`, outside the sum, is the
 *   reading's own time);
 * - `preprocess`: upload, stain normalisation, resize + normalise and the TTA views, GPU included;
 * - `model`: forward, mean over the views, readback, and copying into the output arrays;
 * - `write`: the last batch's CSV rows and joining the CSVs ({@linkcode predictSlide}), then the npz and
 *   h5ad files (the caller's).
 *
 * `formatBusy` (outside the sum) is the time formatting CSV rows: batch b's rows are formatted after batch
 * b + 1 went to the GPU, so on a GPU that is not the CPU it is hidden; with timings on it lands in
 * `preprocess` (the GPU sync there waits behind it).
 */
export const SLIDE_STAGES = ["open", "setup", "read", "preprocess", "model", "write"] as const;

function addTime(t: Record<string, number> | undefined, key: string, since: number): number {
  const now = performance.now();
  if (t) t[key] = (t[key] ?? 0) + (now - since);
  return now;
}

/** A file name from a path (either separator). */
function fileName(path: string): string {
  return path.replace(/[\\/]+$/, "").split(/[\\/]/).pop() ?? path;
}

// ------------------------------------------------------------------------------------------- thumbnails

/** A thumbnail of a level-0 region: `downsample` level-0 pixels per thumbnail pixel, origin `x0, y0`. */
export interface RegionThumbnail extends SlideThumbnail {
  x0: number;
  y0: number;
}

/**
 * A low-resolution RGB image of a level-0 region (default the whole slide): the smallest pyramid level
 * that is at least as fine as `downsample`, box-averaged by the integer factor that brings it closest to
 * `downsample` from below; single-level images (JPEG, PNG, flat TIFF) are read from level 0 in strips and
 * box-averaged, so memory stays at one strip.
 *
 * @example
 * ```ts
 * const slide = await openSlide("CMU-1-Small-Region.svs");
 * const thumb = await slideThumbnail(slide, { downsample: 16 }); // ≈ 139 × 185, thumb.downsample = 16
 * ```
 */
export async function slideThumbnail(
  slide: Slide,
  o: { downsample: number; region?: [number, number, number, number] },
): Promise<RegionThumbnail> {
  const [W0, H0] = [slide.levels[0].width, slide.levels[0].height];
  const [rx, ry, rw, rh] = o.region ?? [0, 0, W0, H0];
  const want = Math.max(1, o.downsample);
  let k = 0;
  slide.levels.forEach((l, i) => {
    if (l.downsample <= want * (1 + 1e-6) && l.downsample > slide.levels[k].downsample) k = i;
  });
  const ds = slide.levels[k].downsample;
  const f = Math.max(1, Math.floor(want / ds + 1e-6));
  // The region in level-k pixels, and the thumbnail size (whole f × f boxes).
  const kx = Math.round(rx / ds), ky = Math.round(ry / ds);
  const kw = Math.max(1, Math.floor(rw / ds)), kh = Math.max(1, Math.floor(rh / ds));
  const width = Math.max(1, Math.floor(kw / f)), height = Math.max(1, Math.floor(kh / f));
  const data = new Uint8Array(width * height * 3);
  // Strips of whole box rows, ≤ ~16 MB of RGB each.
  const rowsPerStrip = Math.max(1, Math.floor((16 << 20) / (width * f * 3 * f)));
  const acc = new Uint32Array(width * 3);
  for (let r0 = 0; r0 < height; r0 += rowsPerStrip) {
    const nr = Math.min(rowsPerStrip, height - r0);
    const reg = await slide.readRegion(k, kx, ky + r0 * f, width * f, nr * f);
    for (let r = 0; r < nr; r++) {
      acc.fill(0);
      for (let dy = 0; dy < f; dy++) {
        const row = (r * f + dy) * reg.width * 3;
        for (let x = 0; x < width; x++) {
          for (let dx = 0; dx < f; dx++) {
            const s = row + (x * f + dx) * 3;
            acc[3 * x] += reg.data[s];
            acc[3 * x + 1] += reg.data[s + 1];
            acc[3 * x + 2] += reg.data[s + 2];
          }
        }
      }
      const n = f * f, o3 = (r0 + r) * width * 3;
      for (let i = 0; i < width * 3; i++) data[o3 + i] = Math.round(acc[i] / n);
    }
  }
  return { width, height, data, downsample: ds * f, x0: kx * ds, y0: ky * ds };
}

/** The long side of Space Ranger's `tissue_hires_image.png` and `tissue_lowres_image.png`, in pixels. */
export const SPATIAL_IMAGE_PX = { hires: 2000, lowres: 600 } as const;

/** Scanpy's two images of a slide and their scale factors (see {@linkcode spatialImages}). */
export type SpatialImages = Pick<SpatialLibrary, "hires" | "lowres" | "hiresScale" | "lowresScale">;

/**
 * Scanpy's two images of a slide (see `spatialUns` in slide/h5ad.ts): the whole level-0 slide at `hires`
 * (default 2000) and `lowres` (600) pixels on its long side, as Space Ranger's images, never enlarged. A
 * pyramid level or box average at most that coarse ({@linkcode slideThumbnail}) is resized with PIL's
 * bilinear filter (antialiased), the lowres image from the hires one. The scale factors are image pixels
 * per level-0 pixel (the images' sizes are rounded: within half a pixel).
 *
 * @example
 * ```ts
 * const slide = await openSlide("CMU-1-Small-Region.svs"); // 2220 × 2967
 * const im = await spatialImages(slide); // im.hires 1496 × 2000, im.hiresScale = 2000 / 2967
 * ```
 */
export async function spatialImages(
  slide: Slide,
  o: { hires?: number; lowres?: number } = {},
): Promise<SpatialImages> {
  const long = Math.max(slide.levels[0].width, slide.levels[0].height);
  const hiresScale = Math.min(1, (o.hires ?? SPATIAL_IMAGE_PX.hires) / long);
  const lowresScale = Math.min(1, (o.lowres ?? SPATIAL_IMAGE_PX.lowres) / long);
  const thumb = await slideThumbnail(slide, { downsample: 1 / hiresScale });
  // The thumbnail covers whole boxes of `downsample` level-0 pixels from the top-left corner.
  const size = (scale: number): [number, number] => [
    Math.max(1, Math.round(thumb.width * thumb.downsample * scale)),
    Math.max(1, Math.round(thumb.height * thumb.downsample * scale)),
  ];
  const hires = resizeCpu(thumb, size(hiresScale));
  const lowres = resizeCpu(hires, size(lowresScale));
  return { hires, lowres, hiresScale, lowresScale };
}

// ------------------------------------------------------------------------------------------ the patches

/** The smallest tile side: the model sees 224 px, and ResNet's features are 32 px apart. */
export const MIN_TILE_PX = 32;

/** The default most tiles on tissue that tile mode predicts (the CLI's `--max-tiles`). */
export const MAX_TILES = 100_000;

/**
 * The patches at spots (`px`, `py` in the slide's level-0 pixels) of a spot file (spots outside the slide
 * are dropped, with a count; `file` names the spot file in the error when every spot is outside).
 *
 * @example
 * ```ts
 * const { patches } = spotPatches([{ x: 25, y: 13, px: 4310.5, py: 2050 }], "C2.csv", {
 *   section: "C2", size: 150, width: 9274, height: 9911,
 * }); // patches[0]: C2_25_13, left 4235, top 1975
 * ```
 */
export function spotPatches(
  spots: SpotRow[],
  file: string,
  o: { section: string; size: number; width: number; height: number },
): { patches: SlidePatch[]; outside: number } {
  const keep = spots.filter((s) => s.px >= 0 && s.py >= 0 && s.px < o.width && s.py < o.height);
  if (spots.length && keep.length === 0) {
    throw new Error(
      `Every spot of ${file} falls outside the slide (${o.width}×${o.height}): wrong slide or pixel scale?`,
    );
  }
  const half = Math.floor(o.size / 2);
  return {
    patches: keep.map((s) => ({
      name: `${o.section}_${s.x}_${s.y}`,
      gx: s.x,
      gy: s.y,
      px: s.px,
      py: s.py,
      left: Math.floor(s.px) - half,
      top: Math.floor(s.py) - half,
      size: o.size,
    })),
    outside: spots.length - keep.length,
  };
}

/**
 * The tissue tiles of a slide: a thumbnail with ≥ 8 thumbnail pixels per tile side (at most 8192 px on its
 * long side), its tissue mask, and the `tilePx` tiles whose tissue fraction reaches `minTissue`, on a grid
 * covering the whole level-0 slide (partial edge tiles as slide/tissue.ts's tiling rule says).
 *
 * @example
 * ```ts
 * const { patches } = await tilePatches(slide, { tilePx: 200, section: "CMU-1" });
 * ```
 */
export async function tilePatches(
  slide: Slide,
  o: { tilePx: number; section: string; minTissue?: number },
): Promise<{ patches: SlidePatch[]; thumbnail: RegionThumbnail; cols: number; rows: number }> {
  const [W0, H0] = [slide.levels[0].width, slide.levels[0].height];
  const thumbnail = await slideThumbnail(slide, {
    downsample: Math.max(1, o.tilePx / 8, Math.max(W0, H0) / 8192),
  });
  // Level-0 geometry: the thumbnail (whole boxes) can stop up to one box short of the right and bottom.
  const { tiles, cols, rows } = tissueTiles(thumbnail, {
    tilePx: o.tilePx,
    minTissueFraction: o.minTissue ?? 0.5,
    slideWidth: W0,
    slideHeight: H0,
  });
  const half = o.tilePx / 2;
  const patches = tiles
    .map((t) => ({
      name: `${o.section}_${t.col}_${t.row}`,
      gx: t.col,
      gy: t.row,
      px: t.x + half,
      py: t.y + half,
      left: t.x,
      top: t.y,
      size: o.tilePx,
    }));
  return { patches, thumbnail, cols, rows };
}

/**
 * Read the patches' squares from level 0. With `context` > 0 (grid modes) each square grows to
 * `size + context`, placed so that the grid's centred `size` window is the patch itself.
 */
export async function readPatches(
  slide: Slide,
  patches: SlidePatch[],
  timings?: Record<string, number>,
  context = 0,
): Promise<RgbImage[]> {
  const out: RgbImage[] = [];
  for (const p of patches) {
    const t0 = performance.now();
    const side = p.size + context;
    const shift = context ? centerBox(side, side, p.size)[0] : 0;
    const r = await slide.readRegion(0, p.left - shift, p.top - shift, side, side);
    addTime(timings, "readBusy", t0);
    out.push({ width: r.width, height: r.height, channels: 3, data: r.data, warnings: [] });
  }
  return out;
}

// ---------------------------------------------------------------------------------------- prediction

/** The CSV files' texts; `aux` null when skipped. */
export interface SlideCsvs {
  target: string;
  aux: string | null;
  tumor: string;
}

/** Options of {@linkcode predictSlide}. */
export interface PredictSlideOptions {
  /** The squares to predict, all of one side (`patchPx`). */
  patches: SlidePatch[];
  mode: "spots" | "tiles";
  /** Patch side in level-0 pixels (the grid windows scale with it). */
  patchPx: number;
  /** The name prefix of the spots or tiles (kept in the results and the h5ad's `uns['spatial']`). */
  section: string;
  /** Patches read and predicted at a time (default 4; × the views of `tta`). */
  batchSize?: number;
  /** Default `tta`. */
  tta?: Tta;
  stain?: StainMethod;
  stainTarget?: StainTarget;
  /** Gene names of the heads (default `target_0…`, `aux_0…`); their lengths must match the model. */
  targetGenes?: string[];
  auxGenes?: string[];
  /** The checkpoint's name for the results and the h5ad's `uns` (default ""). */
  weights?: string;
  /** The slide's name for the results (default the slide's path). */
  slideName?: string;
  /** Microns per level-0 pixel across, for the results (default the slide's). */
  mpp?: number | null;
  /**
   * Also format the CSV texts (as {@linkcode slideCsvs} gives them), batch by batch while the GPU runs the
   * next batch; `aux: false` skips the aux genes' (19 699 columns a row).
   */
  csv?: { aux: boolean };
  /** Checked after every batch: an aborted signal throws its reason. */
  signal?: AbortSignal;
  /** Called after every batch with the patches done and their total. */
  onProgress?: (done: number, total: number) => void;
  /** Things worth telling the user that do not stop the run (the size of a huge aux CSV). */
  onWarning?: (message: string) => void;
  /**
   * When given, filled with wall-clock milliseconds per stage (added to what is there), see
   * {@linkcode SLIDE_STAGES}. Timing adds one GPU sync per batch between preprocessing and the model, so
   * that each stage's GPU work is charged to it; the outputs are the same.
   */
  timings?: Record<string, number>;
}

/**
 * Predict at the spots or tiles of a slide: read each batch of squares from level 0 (the next batch while
 * the GPU predicts this one), the model over the TTA views, and the mean over the views. A NaN or Inf
 * output is an error naming the spot or tile. The model and the slide stay the caller's.
 *
 * @example
 * ```ts
 * const slide = await openSlide("C2.jpg");
 * const { patches } = spotPatches(parseSpots(text, "C2.tsv"), "C2.tsv", { section: "C2", size: 150, width, height });
 * const p = await predictSlide(engine, model, slide, { patches, mode: "spots", patchPx: 150, section: "C2" });
 * const npz = slideNpz(p);
 * ```
 */
export async function predictSlide(
  engine: Engine,
  model: PredictModel,
  slide: Slide,
  o: PredictSlideOptions,
): Promise<SlidePredictions & { csv?: SlideCsvs }> {
  const batchSize = o.batchSize ?? 4;
  const tta = o.tta ?? "tta";
  const timings = o.timings;
  const patches = o.patches, patchPx = o.patchPx;
  const nT = model.config.targetGenes, nA = model.config.auxGenes;
  const genes = (given: string[] | undefined, n: number, what: string) => {
    if (given && given.length !== n) {
      throw new RangeError(`${given.length} ${what} gene names, but the model's ${what} head predicts ${n}`);
    }
    return given ?? Array.from({ length: n }, (_, i) => `${what}_${i}`);
  };
  const P = patches.length;
  const out: SlidePredictions = {
    names: patches.map((p) => p.name),
    targetGenes: genes(o.targetGenes, nT, "target"),
    auxGenes: genes(o.auxGenes, nA, "aux"),
    target: new Float32Array(P * nT),
    aux: new Float32Array(P * nA),
    tumorProb: new Float32Array(P),
    pixel: new Float64Array(P * 2),
    grid: new Int32Array(P * 2),
    topLeft: new Float64Array(P * 2),
    section: o.section,
    weights: o.weights ?? "",
    tta,
    mode: o.mode,
    patchPx,
    slide: o.slideName ?? slide.path,
    mpp: o.mpp === undefined ? slide.mpp : o.mpp,
  };
  patches.forEach((p, i) => {
    out.pixel.set([p.px, p.py], 2 * i);
    out.grid.set([p.gx, p.gy], 2 * i);
    out.topLeft.set([p.left, p.top], 2 * i);
  });
  const auxCsvBytes = P * nA * 10.5; // ~10 characters a value
  if (o.csv?.aux && auxCsvBytes > 2 ** 30) {
    o.onWarning?.(
      `aux_count_pred.csv will take about ${(auxCsvBytes / 2 ** 30).toFixed(1)} GiB ` +
        `(${P} × ${nA} values); --no-aux-csv skips it (the npz keeps the aux genes)`,
    );
  }
  // Read batch b + 1 while the GPU predicts batch b.
  // Grid modes see up to 1.5× the patch (the original's 225 px window around a 150 px spot).
  const context = tta === "grid" || tta === "grid_tta" ? Math.round(patchPx * 1.5) - patchPx : 0;
  const read = (b0: number) => readPatches(slide, patches.slice(b0, b0 + batchSize), timings, context);
  let next: Promise<RgbImage[]> | null = read(0);
  // The CSV rows of batch b are formatted while the GPU runs batch b + 1 (19 699 aux values a spot).
  const csv = o.csv && {
    target: new CsvBuilder(out.targetGenes),
    aux: o.csv.aux ? new CsvBuilder(out.auxGenes) : null,
    tumor: new CsvBuilder(["Annotation"]),
  };
  const format = (b0: number, n: number) => {
    if (!csv) return;
    const t0 = performance.now();
    const names = out.names.slice(b0, b0 + n);
    csv.target.add(names, out.target.subarray(b0 * nT, (b0 + n) * nT));
    csv.aux?.add(names, out.aux.subarray(b0 * nA, (b0 + n) * nA));
    csv.tumor.add(names, Array.from(out.tumorProb.subarray(b0, b0 + n), (v) => v > 0.5));
    addTime(timings, "formatBusy", t0);
  };
  let unformatted: [number, number] | null = null;
  let t: number;
  try {
    for (let b0 = 0; b0 < P; b0 += batchSize) {
      t = performance.now();
      const images = await next!;
      next = b0 + batchSize < P ? read(b0 + batchSize) : null;
      t = addTime(timings, "read", t);
      const job = predictViews(engine, model, images, {
        tta,
        base: patchPx,
        stain: o.stain,
        stainTarget: o.stainTarget,
        timings,
        names: out.names.slice(b0, b0 + images.length), // a NaN / Inf output is an error naming it
        what: o.mode === "spots" ? "spot" : "tile",
      });
      if (unformatted) format(...unformatted);
      const res = await job;
      t = performance.now();
      out.target.set(res.target, b0 * nT);
      out.aux.set(res.aux, b0 * nA);
      out.tumorProb.set(res.tumor, b0);
      unformatted = [b0, images.length];
      o.onProgress?.(b0 + images.length, P);
      o.signal?.throwIfAborted();
      addTime(timings, "model", t);
    }
  } finally {
    next?.catch(() => {}); // a read still in flight when prediction failed
  }
  if (!csv) return out;
  t = performance.now();
  if (unformatted) format(...unformatted);
  const texts = { target: csv.target.text(), aux: csv.aux?.text() ?? null, tumor: csv.tumor.text() };
  addTime(timings, "write", t);
  return { ...out, csv: texts };
}

// ------------------------------------------------------------------------------------------- encoders

/**
 * The original's CSV files: `target_count_pred.csv`, `aux_count_pred.csv` (unless `aux` is false) and
 * `tumor_pred.csv` (index = spot or tile name; `Annotation` = mean probability > 0.5).
 */
export function slideCsvs(p: SlidePredictions, o: { aux?: boolean } = {}): SlideCsvs {
  return {
    target: csvTable(p.names, p.targetGenes, p.target),
    aux: o.aux === false ? null : csvTable(p.names, p.auxGenes, p.aux),
    tumor: csvTable(p.names, ["Annotation"], Array.from(p.tumorProb, (v) => v > 0.5)),
  };
}

/**
 * `predictions.npz`: target, aux, tumor_prob, names, target_genes, aux_genes as `predict-patches`, and
 * `pixel` `[P, 2]` (level-0 centre x, y; float64) and `grid` `[P, 2]` (array x, y or tile col, row; int32);
 * `compress` deflates the members.
 */
export function slideNpz(p: SlidePredictions, o: { compress?: boolean } = {}): Uint8Array {
  const P = p.names.length;
  return encodeNpz({
    target: { dtype: "f4", shape: [P, p.targetGenes.length], data: p.target },
    aux: { dtype: "f4", shape: [P, p.auxGenes.length], data: p.aux },
    tumor_prob: { dtype: "f4", shape: [P], data: p.tumorProb },
    names: { dtype: "U", shape: [P], data: p.names },
    target_genes: { dtype: "U", shape: [p.targetGenes.length], data: p.targetGenes },
    aux_genes: { dtype: "U", shape: [p.auxGenes.length], data: p.auxGenes },
    pixel: { dtype: "f8", shape: [P, 2], data: p.pixel },
    grid: { dtype: "i4", shape: [P, 2], data: p.grid },
  }, { compress: o.compress });
}

/**
 * The AnnData files of slide predictions: X = target genes, and X = aux genes in the second; `obs` =
 * `tumor_prob` and `tumor` (boolean, `tumor_prob` > 0.5 as tumor_pred.csv), `obsm` = `spatial` (level-0
 * x, y) and `grid`; `uns` = the given entries of each head, then `slide` (its file name), `mode`,
 * `patch_px`, `mpp`, and with `images` scanpy's `spatial` layout under the section's name (`metadata`:
 * `software_version` = `software`, `source_image_path` = the slide's file name).
 */
export async function slideH5ad(
  p: SlidePredictions,
  o: {
    uns: { target: Record<string, UnsValue>; aux: Record<string, UnsValue> };
    images?: SpatialImages;
    /** The software that made the file, for the spatial metadata (default "he2gene"). */
    software?: string;
  },
): Promise<{ target: Uint8Array; aux: Uint8Array }> {
  const P = p.names.length;
  const common = {
    obsNames: p.names,
    obs: {
      tumor_prob: p.tumorProb,
      tumor: Array.from(p.tumorProb, (v) => v > 0.5),
    },
    obsm: {
      spatial: { data: p.pixel, shape: [P, 2] as [number, number] },
      grid: { data: p.grid, shape: [P, 2] as [number, number] },
    },
  };
  const uns = (head: "target" | "aux") => ({
    ...o.uns[head],
    slide: fileName(p.slide),
    mode: p.mode,
    patch_px: p.patchPx,
    ...(p.mpp ? { mpp: p.mpp } : {}),
    ...(o.images
      ? {
        spatial: spatialUns(p.section, {
          ...o.images,
          spotDiameter: p.patchPx,
          metadata: { software_version: o.software ?? "he2gene", source_image_path: fileName(p.slide) },
        }),
      }
      : {}),
  });
  return {
    target: await encodeH5ad({ ...common, X: p.target, varNames: p.targetGenes, uns: uns("target") }),
    aux: await encodeH5ad({ ...common, X: p.aux, varNames: p.auxGenes, uns: uns("aux") }),
  };
}

/** The spots' or tiles' squares with their target genes and tumour call as GeoJSON for QuPath. */
export function slideGeoJson(p: SlidePredictions): Uint8Array {
  return predictionsGeoJson({
    names: p.names,
    topLeft: p.topLeft,
    size: p.patchPx,
    genes: p.targetGenes,
    values: p.target,
    tumorProb: p.tumorProb,
    objectType: p.mode === "tiles" ? "tile" : "detection",
  });
}
