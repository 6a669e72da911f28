/**
 * Test-time augmentation shared by `predict-patches` and `predict-slide`: the views of a batch of
 * same-size patches, the model over all of them at once, and the mean over the views.
 *
 * - `single`: the patch;
 * - `tta` (the original's default): the 8 dihedral symmetries of the resized patch;
 * - `grid`: centred crops of 150, 75 and 225 px (for a 150 px spot patch; scaled with `base`), those that
 *   fit in the patch;
 * - `grid_tta`: each crop × 8 symmetries.
 *
 * Views are stacked view-major (`views × n` images), so one forward pass serves the whole batch.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { mean } from "../ops/reduce.ts";
import type { PredictModel } from "../model/mod.ts";
import { encoderInput } from "./encoder_input.ts";
import {
  centerBox,
  type CropBox,
  dihedral,
  MACENKO_DEFAULT_TARGET,
  type MacenkoTarget,
  normalizeStain,
  type ReinhardTarget,
  resizeNormalize,
  type RgbImage,
  type StainMethod,
  uploadImages,
} from "../slide/mod.ts";

/** TTA modes. */
export type Tta = "single" | "tta" | "grid" | "grid_tta";
/** Every TTA mode, for option checks. */
export const TTAS: readonly Tta[] = ["single", "tta", "grid", "grid_tta"];
/** Grid windows for a 150 px spot patch, as the original (`grid` modes). */
export const GRID_WINDOWS: readonly number[] = [150, 75, 225];

/** A stain normalisation target (Macenko or Reinhard). */
export type StainTarget = MacenkoTarget | ReinhardTarget;
export { MACENKO_DEFAULT_TARGET };

/**
 * The crop boxes of a patch for a TTA mode: the whole patch, or for `grid` modes the centred windows of
 * {@linkcode GRID_WINDOWS} scaled by `base / 150` (`base` = the spot patch size in pixels) that fit.
 */
export function viewBoxes(img: { width: number; height: number }, tta: Tta, base = 150): CropBox[] {
  if (tta === "single" || tta === "tta") return [[0, 0, img.width, img.height]];
  const fits = GRID_WINDOWS.map((w) => Math.round(w * base / 150))
    .filter((s) => s >= 1 && s <= Math.min(img.width, img.height));
  if (fits.length === 0) return [[0, 0, img.width, img.height]];
  return fits.map((s) => centerBox(img.width, img.height, s));
}

/** How many views a mode makes of a patch (boxes × symmetries). */
export function viewCount(img: { width: number; height: number }, tta: Tta, base = 150): number {
  return viewBoxes(img, tta, base).length * (tta === "tta" || tta === "grid_tta" ? 8 : 1);
}

function addTime(t: Record<string, number> | undefined, key: string, since: number): number {
  const now = performance.now();
  if (t) t[key] = (t[key] ?? 0) + now - since;
  return now;
}

/** The predictions of a batch, on the host: `target` (n, targetGenes), `aux` (n, auxGenes), `tumor` (n). */
export interface ViewPredictions {
  target: Float32Array;
  aux: Float32Array;
  tumor: Float32Array;
}

/**
 * Refuse predictions that hold NaN or ±Inf, naming the patches (or spots / tiles) they belong to: a
 * non-finite value must never reach a CSV as a number or an empty cell. `names[i]` is row i's name.
 *
 * @example
 * ```ts
 * import { assertFinitePredictions } from "./views.ts";
 * const ok = { target: new Float32Array([1, 2]), aux: new Float32Array(2), tumor: new Float32Array(2) };
 * assertFinitePredictions(ok, ["spot_1", "spot_2"]); // fine; a NaN in row 2 would throw naming spot_2
 * ```
 */
export function assertFinitePredictions(p: ViewPredictions, names: readonly string[], what = "patch"): void {
  const n = names.length;
  const bad: { name: string; heads: string }[] = [];
  for (let i = 0; i < n; i++) {
    const heads: string[] = [];
    for (const [head, a] of [["target", p.target], ["aux", p.aux], ["tumour", p.tumor]] as const) {
      const w = a.length / n;
      let k = 0;
      for (let j = i * w; j < (i + 1) * w; j++) if (!Number.isFinite(a[j])) k++;
      if (k) heads.push(`${k} of ${w} ${head} values`);
    }
    if (heads.length) bad.push({ name: names[i], heads: heads.join(", ") });
  }
  if (bad.length === 0) return;
  const others = bad.slice(1, 6).map((b) => b.name).join(", ") + (bad.length > 6 ? ", …" : "");
  throw new Error(
    `Cannot predict ${what} ${bad[0].name}: the model's output is NaN or Inf (${bad[0].heads})` +
      (bad.length > 1 ? `; also for ${bad.length - 1} more in this batch: ${others}` : "") +
      `. The network overflows float32 on this input: check the checkpoint's weights`,
  );
}

/**
 * Predict one batch of same-size patches: upload, optional stain normalisation, the views, the model, and
 * the mean over the views (of the genes and of the tumour probability). With `names` (one per image), a
 * NaN or Inf in the output is an error naming the image (see {@linkcode assertFinitePredictions}).
 */
export async function predictViews(
  engine: Engine,
  model: PredictModel,
  images: RgbImage[],
  o: {
    tta: Tta;
    /** Spot patch size in pixels for the grid windows (default 150). */
    base?: number;
    stain?: StainMethod;
    stainTarget?: StainTarget;
    /** Adds `preprocess` and `model` milliseconds (with a GPU sync between them). */
    timings?: Record<string, number>;
    /** The images' names (patch names, spot ids, tiles): non-finite outputs are refused, naming them. */
    names?: readonly string[];
    /** What a name is, for the message (default "patch"). */
    what?: string;
  },
): Promise<ViewPredictions> {
  const n = images.length;
  const boxes = viewBoxes(images[0], o.tta, o.base);
  const ks = o.tta === "tta" || o.tta === "grid_tta" ? [0, 1, 2, 3, 4, 5, 6, 7] : [0];
  const views = boxes.length * ks.length;
  const res = await engine.scope(async () => {
    let t = performance.now();
    let src = uploadImages(engine, images);
    if (o.stain && o.stain !== "none") {
      const res = await normalizeStain(src, o.stain, { target: o.stainTarget });
      if (res.images !== src) src.dispose();
      src = res.images;
    }
    // The model's input side and normalisation (an encoder's own; HE2Gene: 224 px, its mean and std).
    // Through an encoder: what it sees in `embed` and in training (timm's eval transform for a ViT).
    const size = model.inputSize ?? 224, enc = model.encoder;
    const x = engine.empty([views * n, 3, size, size], "tta batch");
    let v = 0;
    for (const box of boxes) {
      const r = enc // (n, 3, S, S)
        ? encoderInput(enc, src, box)
        : resizeNormalize(src, { size, boxes: [box], mean: model.mean, std: model.std });
      for (const k of ks) {
        const d = k === 0 ? r : dihedral(r, k);
        engine.copy(d, x, { dstOffset: v * d.size });
        if (d !== r) d.dispose();
        v++;
      }
      r.dispose();
    }
    src.dispose();
    if (o.timings) {
      await engine.sync();
      t = addTime(o.timings, "preprocess", t);
    }
    const p = model.predict(x);
    const avg = (t: Tensor) => mean(t.reshape([views, n, t.shape[1]]), { axes: 0 });
    const [target, aux, tumor] = await Promise.all(
      [avg(p.target), avg(p.aux), avg(p.tumorProb)].map((t) => t.toArray()),
    );
    addTime(o.timings, "model", t);
    return { target, aux, tumor };
  });
  if (o.names) assertFinitePredictions(res, o.names, o.what);
  return res;
}
