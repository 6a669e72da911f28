/**
 * Patch prediction as a library: decoded bytes in, {@linkcode PatchPredictions} out, and the output
 * encoders (CSV text, NPZ bytes, h5ad bytes) as pure functions of them. No files, no terminal: warnings and
 * progress go through callbacks, cancellation through an `AbortSignal`.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { PredictModel } from "../model/mod.ts";
import { decodeImage, type RgbImage, type StainMethod } from "../slide/mod.ts";
import { csvTable, encodeNpz } from "../slide/npz.ts";
import { encodeH5ad, type UnsValue } from "../slide/h5ad.ts";
import { predictViews, type StainTarget, type Tta } from "./views.ts";

/** Predictions for a set of patches, on the host. */
export interface PatchPredictions {
  names: string[];
  targetGenes: string[];
  auxGenes: string[];
  /** (P, targetGenes) */
  target: Float32Array;
  /** (P, auxGenes) */
  aux: Float32Array;
  /** (P,) mean tumour probability over the views */
  tumorProb: Float32Array;
}

/**
 * One patch: its name in the outputs and its encoded image (TIFF, PNG or JPEG), or a function that reads
 * it when its batch comes (so that a folder of many thousand patches is never held in memory at once).
 */
export interface PatchImage {
  name: string;
  bytes: Uint8Array | (() => Promise<Uint8Array>);
}

/** Options of {@linkcode predictPatches}. */
export interface PredictPatchesOptions {
  tta: Tta;
  batchSize: number;
  /** Gene names of the heads (default `target_0…`, `aux_0…`); their lengths must match the model. */
  targetGenes?: string[];
  auxGenes?: string[];
  stain?: StainMethod;
  stainTarget?: StainTarget;
  /** Checked after every batch: an aborted signal throws its reason. */
  signal?: AbortSignal;
  /** Called after every batch with the patches done and their total. */
  onProgress?: (done: number, total: number) => void;
  /** Decoder warnings and patches not 150 × 150 (`name`: the patch's name). */
  onWarning?: (name: string, message: string) => void;
  /** How a patch is named in error messages (default its name; the CLI gives its path). */
  label?: (name: string) => string;
}

/**
 * Predict every patch: decode, resize to 224 × 224 (PIL's bilinear), normalise, the model over the views
 * of `tta`, and the mean over the views. Patches of one size in a batch go through the GPU together.
 *
 * @example
 * ```ts
 * const p = await predictPatches(engine, model, [{ name: "A1_3_4", bytes }], { tta: "tta", batchSize: 4 });
 * const csv = patchCsvs(p)["target_count_pred.csv"];
 * ```
 */
export async function predictPatches(
  engine: Engine,
  model: PredictModel,
  images: PatchImage[],
  o: PredictPatchesOptions,
): Promise<PatchPredictions> {
  const nT = model.config.targetGenes, nA = model.config.auxGenes;
  const genes = (given: string[] | undefined, n: number, what: string) => {
    if (given && given.length !== n) {
      throw new RangeError(`${given.length} ${what} gene names, but the model's ${what} head predicts ${n}`);
    }
    return given ?? Array.from({ length: n }, (_, i) => `${what}_${i}`);
  };
  const label = o.label ?? ((n: string) => n);
  const P = images.length;
  const out: PatchPredictions = {
    names: images.map((p) => p.name),
    targetGenes: genes(o.targetGenes, nT, "target"),
    auxGenes: genes(o.auxGenes, nA, "aux"),
    target: new Float32Array(P * nT),
    aux: new Float32Array(P * nA),
    tumorProb: new Float32Array(P),
  };
  for (let b0 = 0; b0 < P; b0 += o.batchSize) {
    o.signal?.throwIfAborted();
    const batch = images.slice(b0, b0 + o.batchSize);
    const { decoded, bySize } = await decodeBatch(batch, label, o.onWarning);
    for (const idx of bySize) {
      const res = await predictViews(engine, model, idx.map((i) => decoded[i]), {
        tta: o.tta,
        stain: o.stain,
        stainTarget: o.stainTarget,
        names: idx.map((i) => label(batch[i].name)), // a NaN / Inf output is an error naming the patch
      });
      idx.forEach((i, j) => {
        const p = b0 + i;
        out.target.set(res.target.subarray(j * nT, (j + 1) * nT), p * nT);
        out.aux.set(res.aux.subarray(j * nA, (j + 1) * nA), p * nA);
        out.tumorProb[p] = res.tumor[j];
      });
    }
    o.onProgress?.(Math.min(b0 + o.batchSize, P), P);
  }
  o.signal?.throwIfAborted();
  return out;
}

/**
 * Read (when `bytes` is a function) and decode a batch's patches, and group them by size: the index lists
 * into `batch` of the patches that go through the GPU together.
 */
export async function decodeBatch(
  batch: PatchImage[],
  label: (name: string) => string,
  onWarning?: (name: string, message: string) => void,
): Promise<{ decoded: RgbImage[]; bySize: number[][] }> {
  const decoded: RgbImage[] = [];
  for (const p of batch) {
    const bytes = typeof p.bytes === "function" ? await p.bytes() : p.bytes;
    decoded.push(decodePatch(p.name, bytes, label(p.name), onWarning));
  }
  const bySize = new Map<string, number[]>();
  decoded.forEach((img, i) => {
    const key = `${img.width}x${img.height}`;
    bySize.set(key, [...(bySize.get(key) ?? []), i]);
  });
  return { decoded, bySize: [...bySize.values()] };
}

/** Decode one patch; errors and warnings name it by `label` (not 150 × 150: a warning). */
export function decodePatch(
  name: string,
  bytes: Uint8Array,
  label: string,
  onWarning?: (name: string, message: string) => void,
): RgbImage {
  let img: RgbImage;
  try {
    img = decodeImage(bytes, label);
  } catch (e) {
    // The decoder's message names the patch too ("Cannot decode LABEL[ as FORMAT]: …"): say it once.
    const m = (e as Error).message, head = `Cannot decode ${label}`;
    const why = m.startsWith(head) ? m.slice(head.length).replace(/^( as \w+)?:\s*/, "") : m;
    throw new Error(`Cannot read patch ${label}: ${why}`);
  }
  for (const w of img.warnings) onWarning?.(name, `${label}: ${w}`);
  if (img.width !== 150 || img.height !== 150) {
    onWarning?.(
      name,
      `${label} is ${img.width}×${img.height}, not 150×150; resized to 224 as the original`,
    );
  }
  return img;
}

/** The original's three CSV files (index = patch name; `Annotation` = mean probability > 0.5). */
export function patchCsvs(p: PatchPredictions): Record<
  "target_count_pred.csv" | "aux_count_pred.csv" | "tumor_pred.csv",
  string
> {
  return {
    "target_count_pred.csv": csvTable(p.names, p.targetGenes, p.target),
    "aux_count_pred.csv": csvTable(p.names, p.auxGenes, p.aux),
    "tumor_pred.csv": csvTable(p.names, ["Annotation"], Array.from(p.tumorProb, (v) => v > 0.5)),
  };
}

/** `predictions.npz`: target, aux, tumor_prob, names, target_genes, aux_genes; `compress` deflates. */
export function patchNpz(p: PatchPredictions, o: { compress?: boolean } = {}): Uint8Array {
  const P = p.names.length;
  return encodeNpz({
    target: { dtype: "f4", shape: [P, p.targetGenes.length], data: p.target },
    aux: { dtype: "f4", shape: [P, p.auxGenes.length], data: p.aux },
    tumor_prob: { dtype: "f4", shape: [P], data: p.tumorProb },
    names: { dtype: "U", shape: [P], data: p.names },
    target_genes: { dtype: "U", shape: [p.targetGenes.length], data: p.targetGenes },
    aux_genes: { dtype: "U", shape: [p.auxGenes.length], data: p.auxGenes },
  }, { compress: o.compress });
}

/**
 * The AnnData files of patch predictions: X = target genes, and X = aux genes in the second; `obs` =
 * `tumor_prob` and `tumor`; `uns` as given for each head.
 */
export async function patchesH5ad(
  p: PatchPredictions,
  uns: { target: Record<string, UnsValue>; aux: Record<string, UnsValue> },
): Promise<{ target: Uint8Array; aux: Uint8Array }> {
  const common = {
    obsNames: p.names,
    obs: { tumor_prob: p.tumorProb, tumor: Array.from(p.tumorProb, (v) => v > 0.5) },
  };
  return {
    target: await encodeH5ad({ ...common, X: p.target, varNames: p.targetGenes, uns: uns.target }),
    aux: await encodeH5ad({ ...common, X: p.aux, varNames: p.auxGenes, uns: uns.aux }),
  };
}
