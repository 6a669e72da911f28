/**
 * `train --encoder resnet50|he2gene|timm --weights FILE [--config config.json] --freeze-encoder
 * [--head linear|mlp|ridge]`: HE2Gene's three heads on a frozen encoder (pipeline/train_heads.ts), with its
 * files. cli/train.ts cuts (and stain-normalises) the patches and splits the spots as for HE2Gene; here
 * every spot's features are computed once and cached in `--out/features/<key>.npz`, where the key hashes
 * the encoder (kind, the weights file's size and fingerprint, timm's config.json), the crop size, the stain
 * option and the sections; a second run or a `--resume` finds them by that key (and checks every spot is
 * in it). Checkpoints (`best.safetensors`, `checkpoint.safetensors`) hold the heads only, with the
 * encoder's record (pipeline/checkpoint.ts `EncoderRecord`): `predict-patches` / `predict-slide` find the
 * weights at the recorded path or at `--encoder-weights`, and refuse them if their size or fingerprint
 * differs.
 *
 * The weights' fingerprint is SHA-256 over the whole file up to 64 MiB; above, over its size, its first
 * 16 MiB and its last 16 MiB (`hashed` says which): a safetensors / torch zip header names every tensor's
 * offsets and the tail holds the last tensors, so a different file of the same size is caught without
 * reading 1.2 GB twice.
 *
 * @module
 */
import { basename, dirname, join, resolve } from "node:path";
import type { Engine } from "../engine/engine.ts";
import type { Encoder, EncoderHeads, HeadKind, HostTensor } from "../model/mod.ts";
import { FineTunedEncoder } from "../model/mod.ts";
import type { TrainConfig } from "../model/train.ts";
import {
  ENCODER_META_KEY,
  type EncoderRecord,
  encoderRecord,
  headsFromTensors,
} from "../pipeline/checkpoint.ts";
import type { LoadedModel } from "../pipeline/checkpoint.ts";
import type { PredictModel } from "../model/mod.ts";
import {
  type CheckpointEntries,
  predictTable,
  type SpotModel,
  type SpotTable,
  trainSpots,
} from "../pipeline/train.ts";
import {
  encodeImages,
  type FeatureTable,
  fitRidgeHeads,
  predictFeatureTable,
  trainHeads,
} from "../pipeline/train_heads.ts";
import { readNpz } from "../slide/npy.ts";
import { encodeNpz, writeAtomic } from "../slide/npz.ts";
import type { TensorEntry } from "../weights/mod.ts";
import { loadModel, readCheckpoint } from "./checkpoint.ts";
import { buildEncoder, type EncoderName, loadEncoder } from "./embed.ts";
import { Interrupted } from "./errors.ts";
import { Progress } from "./progress.ts";
import { epochProgress, fileStore, resumeFrom, untilInterrupted, writeRunPredictions } from "./train_loop.ts";

/** Up to this size the whole weights file is hashed; above, its first and last `FINGERPRINT_PART` bytes. */
const FINGERPRINT_WHOLE = 64 * 2 ** 20;
const FINGERPRINT_PART = 16 * 2 ** 20;

const hex = (b: ArrayBuffer) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");

/** Size and SHA-256 fingerprint of a weights file (see the module doc). */
export async function weightsFingerprint(
  path: string,
): Promise<{ size: number; sha256: string; hashed: string }> {
  const f = await Deno.open(path, { read: true });
  try {
    const size = (await f.stat()).size;
    const readAt = async (off: number, n: number) => {
      const buf = new Uint8Array(n);
      await f.seek(off, Deno.SeekMode.Start);
      for (let got = 0; got < n;) {
        const r = await f.read(buf.subarray(got));
        if (r === null) throw new Error(`Cannot read ${path}: it ended at byte ${off + got}`);
        got += r;
      }
      return buf;
    };
    if (size <= FINGERPRINT_WHOLE) {
      return {
        size,
        sha256: hex(await crypto.subtle.digest("SHA-256", await readAt(0, size))),
        hashed: "whole file",
      };
    }
    const head = await readAt(0, FINGERPRINT_PART),
      tail = await readAt(size - FINGERPRINT_PART, FINGERPRINT_PART);
    const all = new Uint8Array(8 + 2 * FINGERPRINT_PART);
    new DataView(all.buffer).setBigUint64(0, BigInt(size), true);
    all.set(head, 8);
    all.set(tail, 8 + FINGERPRINT_PART);
    return {
      size,
      sha256: hex(await crypto.subtle.digest("SHA-256", all)),
      hashed: `u64 LE size + first and last ${FINGERPRINT_PART / 2 ** 20} MiB`,
    };
  } finally {
    f.close();
  }
}

/** The weights file `--weights` names (a timm folder: its model.safetensors or pytorch_model.bin). */
export async function weightsFile(kind: EncoderName, weights: string): Promise<string> {
  if (kind !== "timm" || !(await Deno.stat(weights)).isDirectory) return weights;
  for (const f of ["model.safetensors", "pytorch_model.bin"]) {
    if ((await Deno.stat(join(weights, f)).catch(() => null))?.isFile) return join(weights, f);
  }
  throw new Error(`Cannot find the weights in ${weights}: no model.safetensors or pytorch_model.bin`);
}

/** What {@linkcode trainOnEncoder} needs from cli/train.ts. */
export interface EncoderRun {
  kind: EncoderName;
  weights: string;
  config?: string;
  head: HeadKind;
  hidden: number;
  crop: number;
  stain: string;
  /** The sections cut, in order (part of the features' key). */
  sections: string[];
  train: SpotTable;
  val: SpotTable;
  test: SpotTable | null;
  cfg: TrainConfig;
  batchSize: number;
  epochs: number;
  patience: number;
  seed: number;
  out: string;
  resume: boolean;
  quiet: boolean;
  compress: boolean;
  say: (s: string) => void;
  interrupted: () => boolean;
}

/**
 * The features of every spot of `r.train`, `r.val`, `r.test`: from `--out/features/<key>.npz` when it holds
 * them all, else computed with the encoder (batched, with progress) and cached there.
 */
async function spotFeatures(
  engine: Engine,
  r: EncoderRun,
): Promise<{ tables: (FeatureTable | null)[]; record: EncoderRecord; key: string }> {
  const file = await weightsFile(r.kind, r.weights);
  const fp = await weightsFingerprint(file);
  const cfgPath = r.kind === "timm" ? r.config ?? join(dirname(file), "config.json") : undefined;
  const cfgText = cfgPath ? await Deno.readTextFile(cfgPath) : undefined;
  const keyText = JSON.stringify({
    v: 1,
    kind: r.kind,
    weights: { size: fp.size, sha256: fp.sha256 },
    config: cfgText ?? null,
    crop: r.crop,
    stain: r.stain,
    sections: r.sections,
  });
  const key = hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(keyText))).slice(0, 16);
  const cachePath = join(r.out, "features", `${key}.npz`);
  const tables = [r.train, r.val, r.test];
  const names = tables.flatMap((t) => t?.names ?? []);
  let rows: Map<string, number> | null = null, features: Float32Array | null = null, dim = 0;
  let record: EncoderRecord | null = null;
  try {
    const npz = await readNpz(cachePath);
    const cached = npz.names.data as string[];
    const at = new Map(cached.map((n, i) => [n, i]));
    if (names.every((n) => at.has(n))) {
      rows = at;
      features = npz.features.data as Float32Array;
      dim = npz.features.shape[1];
      record = JSON.parse((npz.encoder.data as string[])[0]);
      r.say(`reusing the cached features ${cachePath} (${cached.length} spots × ${dim}, ${record!.name})`);
    } else r.say(`the cached features ${cachePath} lack some spots: computing them again`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      r.say(`warning: cannot reuse ${cachePath} (${(e as Error).message}); computing the features again`);
    }
  }
  if (!features) {
    const enc: Encoder = await loadEncoder(engine, r.kind, r.weights, r.config, r.say);
    try {
      dim = enc.dim;
      record = {
        kind: r.kind,
        name: enc.name,
        dim,
        weights: { name: basename(file), path: resolve(file), ...fp },
        ...(cfgText ? { config: JSON.parse(cfgText) } : {}),
        preprocess: { inputSize: enc.inputSize, mean: [...enc.mean], std: [...enc.std] },
      };
      const patches = tables.flatMap((t) => t?.patches ?? []);
      r.say(`computing the features of ${patches.length} spots with ${enc.name} (${dim} each, once) …`);
      const bar = new Progress("features", patches.length, r.quiet, "spots");
      let shown = 0;
      features = await encodeImages(engine, enc, patches, {
        batchSize: 16,
        names,
        onProgress: (done) => (bar.tick(done - shown), shown = done),
        interrupt: () => {
          if (r.interrupted()) {
            throw new Interrupted("stopped while computing the features; nothing was cached");
          }
        },
      });
      bar.done();
    } finally {
      enc.dispose();
    }
    await Deno.mkdir(join(r.out, "features"), { recursive: true });
    await writeAtomic(
      cachePath,
      encodeNpz({
        features: { dtype: "f4", shape: [names.length, dim], data: features },
        names: { dtype: "U", shape: [names.length], data: names },
        encoder: { dtype: "U", shape: [1], data: [JSON.stringify(record)] },
      }),
    );
    rows = new Map(names.map((n, i) => [n, i]));
    r.say(`features cached in ${cachePath}`);
  }
  const take = (t: SpotTable | null): FeatureTable | null => {
    if (!t) return null;
    const f = new Float32Array(t.names.length * dim);
    t.names.forEach((n, i) =>
      f.set(features!.subarray(rows!.get(n)! * dim, (rows!.get(n)! + 1) * dim), i * dim)
    );
    return { ...t, patches: [], features: f, dim };
  };
  return { tables: tables.map(take), record: record!, key };
}

/** Train heads on a frozen encoder, with every file of a `train` run (see the module doc). */
export async function trainOnEncoder(engine: Engine, r: EncoderRun): Promise<void> {
  const { tables, record, key } = await spotFeatures(engine, r);
  const [train, val, test] = tables as [FeatureTable, FeatureTable, FeatureTable | null];
  const resume = await resumeFrom(r.out, r.resume);
  let ridge: Awaited<ReturnType<typeof fitRidgeHeads>> | undefined;
  if (r.head === "ridge" && !resume) {
    // (A resumed run has its fitted gene heads in its checkpoint.)
    ridge = await fitRidgeHeads(engine, train, val);
    r.say(
      `ridge: target and aux heads in closed form, lambda ${ridge.lambda.toPrecision(3)} chosen on the ` +
        `validation spots (of ${
          ridge.lambdas.map((l) => l.toPrecision(3)).join(", ")
        }; validation target MSE ` +
        `${ridge.valMse.map((m) => m.toFixed(4)).join(", ")}); the tumour head (a logistic regression) is ` +
        `trained by Adam`,
    );
  }
  r.say(
    `training ${r.head} heads on frozen ${record.name} features (${record.dim}) of ${train.names.length} spots, ` +
      `validating on ${val.names.length}; ${train.targetGenes.length} target / ${train.auxGenes.length} aux genes`,
  );
  const progress = epochProgress(r.quiet);
  const result = await untilInterrupted(r.out, progress, () =>
    trainHeads(engine, train, val, {
      heads: {
        dim: record.dim,
        targetGenes: train.targetGenes.length,
        auxGenes: train.auxGenes.length,
        head: r.head,
        hidden: r.head === "mlp" ? r.hidden : undefined,
      },
      train: r.cfg,
      batchSize: r.batchSize,
      epochs: r.epochs,
      patience: r.patience,
      seed: r.seed,
      store: fileStore(r.out),
      encoder: record,
      featureKey: key,
      resume,
      ridge,
      interrupt: r.interrupted,
      onEpochStart: progress.onEpochStart,
      onStep: progress.onStep,
      onMessage: (line) => r.say(line),
    }));
  const { model, history, best } = result;
  try {
    await writeRunPredictions(r.out, {
      train,
      val,
      valPredictions: await predictFeatureTable(model, val),
      test,
      testPredictions: test ? await predictFeatureTable(model, test) : undefined,
      compress: r.compress,
    });
  } finally {
    model.dispose();
  }
  console.log(
    `${history.length} epochs; best epoch ${best.epoch} (validation target MSE ${best.valMse.toFixed(4)}). ` +
      `Files in ${r.out}: best.safetensors (${r.head} heads; the encoder is ${record.weights.path}, not copied), ` +
      `checkpoint.safetensors, log.jsonl, features/${key}.npz, val_predictions.npz, val_truth.npz` +
      `${test ? `, test_predictions.npz, test_truth.npz, test_baseline.npz` : ""}.\n` +
      `Predict: deno task he2gene predict-patches DIR --weights ${join(r.out, "best.safetensors")}`,
  );
}

/** What {@linkcode fineTuneOnEncoder} needs from cli/train.ts. */
export interface FineTuneRun extends Omit<EncoderRun, "head" | "hidden" | "crop" | "stain" | "sections"> {
  /** Blocks fine-tuned, counted from the end. */
  k: number;
}

/** Metadata key of a fine-tuned encoder's checkpoint: the blocks trained (`--unfreeze-last`). */
export const UNFREEZE_META_KEY = "he2gene.unfreeze_last";

/** Safetensors entries of a state dict (float32; batch-norm step counters as int64, as PyTorch keeps them). */
function stateEntries(sd: Map<string, HostTensor>): Map<string, TensorEntry> {
  const out = new Map<string, TensorEntry>();
  for (const [k, t] of sd) {
    out.set(
      k,
      k.endsWith("num_batches_tracked")
        ? { dtype: "I64", shape: [], bytes: new Uint8Array(new BigInt64Array([BigInt(t.data[0])]).buffer) }
        : {
          dtype: "F32",
          shape: t.shape,
          bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
        },
    );
  }
  return out;
}

/**
 * Fine-tune an encoder's last `r.k` blocks with HE2Gene's three linear heads (`--unfreeze-last K`):
 * pipeline/train.ts's loop on the patches (HE2Gene's augmentation, batches, validation, early stopping,
 * resume and interrupts) over a {@linkcode FineTunedEncoder}, the patches resized to the encoder's input
 * and normalised with its mean and std. `best.safetensors` holds the heads and the trained blocks
 * (`encoder.<key>`) with the encoder's record; predict-patches / predict-slide lay them over the original
 * weights (checked by size and fingerprint, as for frozen heads).
 */
export async function fineTuneOnEncoder(engine: Engine, r: FineTuneRun): Promise<void> {
  const file = await weightsFile(r.kind, r.weights);
  const fp = await weightsFingerprint(file);
  const cfgPath = r.kind === "timm" ? r.config ?? join(dirname(file), "config.json") : undefined;
  const cfgText = cfgPath ? await Deno.readTextFile(cfgPath) : undefined;
  const config = cfgText ? JSON.parse(cfgText) : undefined;
  const { tensors } = await readCheckpoint(file);
  const build = (w: Map<string, HostTensor>) => buildEncoder(engine, r.kind, w, config, file);
  const enc = build(tensors);
  const record: EncoderRecord = {
    kind: r.kind,
    name: enc.name,
    dim: enc.dim,
    weights: { name: basename(file), path: resolve(file), ...fp },
    ...(config ? { config } : {}),
    preprocess: { inputSize: enc.inputSize, mean: [...enc.mean], std: [...enc.std] },
  };
  const nT = r.train.targetGenes.length, nA = r.train.auxGenes.length;
  const adapter: SpotModel<FineTunedEncoder> = {
    describe: { encoder: r.kind, weights: fp.sha256, config: cfgText ?? null, unfreezeLast: r.k },
    init: () =>
      FineTunedEncoder.create(engine, enc, {
        k: r.k,
        variant: "base",
        targetGenes: nT,
        auxGenes: nA,
        seed: r.seed,
      }),
    fromStateDict: (sd, f, o) =>
      FineTunedEncoder.fromStateDict(engine, sd, {
        weights: tensors,
        build,
        k: o.trainable ? r.k : 0,
        file: f,
      }),
    stateDict: (m) => m.stateDict(),
    checkpoint: async (m, extra): Promise<CheckpointEntries> => ({
      tensors: stateEntries(await m.stateDict()),
      metadata: {
        format: "he2gene-finetuned",
        config: JSON.stringify({ variant: "base", targetGenes: nT, auxGenes: nA, dim: enc.dim, k: r.k }),
        [ENCODER_META_KEY]: JSON.stringify(record),
        [UNFREEZE_META_KEY]: String(r.k),
        target_genes: JSON.stringify(extra.targetGenes),
        aux_genes: JSON.stringify(extra.auxGenes),
        ...extra.metadata,
      },
    }),
  };
  const resume = await resumeFrom(r.out, r.resume);
  const input = {
    imageSize: enc.inputSize,
    mean: [...enc.mean] as [number, number, number],
    std: [...enc.std] as [number, number, number],
  };
  r.say(
    `fine-tuning the last ${r.k} block(s) of ${enc.name} with HE2Gene's heads on ${r.train.names.length} spots, ` +
      `validating on ${r.val.names.length}; ${nT} target / ${nA} aux genes; ${enc.inputSize} px input`,
  );
  const progress = epochProgress(r.quiet);
  let result;
  try {
    result = await untilInterrupted(r.out, progress, () =>
      trainSpots(engine, r.train, r.val, {
        config: { backbone: { name: record.name } as never, variant: "base", targetGenes: nT, auxGenes: nA },
        model: adapter,
        train: r.cfg,
        batchSize: r.batchSize,
        epochs: r.epochs,
        patience: r.patience,
        seed: r.seed,
        store: fileStore(r.out),
        resume,
        ...input,
        interrupt: r.interrupted,
        onEpochStart: progress.onEpochStart,
        onStep: progress.onStep,
        onMessage: (line) => r.say(line),
      }));
  } finally {
    enc.dispose();
  }
  const { model, history, best } = result;
  try {
    const opts = { batchSize: Math.min(r.batchSize, 64), ...input };
    await writeRunPredictions(r.out, {
      train: r.train,
      val: r.val,
      valPredictions: await predictTable(model, r.val, opts),
      test: r.test,
      testPredictions: r.test ? await predictTable(model, r.test, opts) : undefined,
      compress: r.compress,
    });
  } finally {
    model.dispose();
  }
  console.log(
    `${history.length} epochs; best epoch ${best.epoch} (validation target MSE ${best.valMse.toFixed(4)}). ` +
      `Files in ${r.out}: best.safetensors (heads and the last ${r.k} block(s); the rest of the encoder is ` +
      `${record.weights.path}, not copied), checkpoint.safetensors, log.jsonl, val_predictions.npz, ` +
      `val_truth.npz${r.test ? `, test_predictions.npz, test_truth.npz, test_baseline.npz` : ""}.\n` +
      `Predict: deno task he2gene predict-patches DIR --weights ${join(r.out, "best.safetensors")}`,
  );
}

/**
 * A model to predict with, from a checkpoint file: HE2Gene's (`loadModel`), or heads on a frozen encoder
 * (their metadata hold {@linkcode ENCODER_META_KEY}) with the encoder loaded from `encoderWeights` or the
 * recorded path, after checking its size and fingerprint against the record.
 *
 * @example
 * ```ts
 * const { model } = await loadPredictor(engine, "runs/uni/best.safetensors", { encoderWeights: "uni/" });
 * ```
 */
export async function loadPredictor(
  engine: Engine,
  path: string,
  o: { encoderWeights?: string; warn?: (s: string) => void } = {},
): Promise<Omit<LoadedModel, "model"> & { model: PredictModel }> {
  const ck = await readCheckpoint(path);
  if (ck.metadata[ENCODER_META_KEY] === undefined) {
    if (o.encoderWeights) {
      throw new Error(
        `--encoder-weights is for heads trained on a frozen encoder; ${path} is an HE2Gene model`,
      );
    }
    return await loadModel(engine, path);
  }
  const rec = encoderRecord(ck.metadata, path);
  const given = o.encoderWeights ? await weightsFile(rec.kind, o.encoderWeights) : rec.weights.path;
  const how = o.encoderWeights ? "--encoder-weights" : `the path ${path} records`;
  const st = await Deno.stat(given).catch(() => null);
  if (!st?.isFile) {
    throw new Error(
      `Cannot load the encoder of ${path}: its weights ${given} (${how}) are missing; give them with ` +
        `--encoder-weights FILE (${rec.weights.name}, ${rec.weights.size} bytes)`,
    );
  }
  const fp = await weightsFingerprint(given);
  if (fp.size !== rec.weights.size || fp.sha256 !== rec.weights.sha256) {
    throw new Error(
      `Cannot load the encoder of ${path}: ${given} is not the file its heads were trained on ` +
        `(${rec.weights.name}: ${rec.weights.size} bytes, SHA-256 ${
          rec.weights.sha256.slice(0, 16)
        }… of the ${rec.weights.hashed}; ` +
        `${given}: ${fp.size} bytes, ${fp.sha256.slice(0, 16)}…)`,
    );
  }
  const { tensors } = await readCheckpoint(given);
  if (ck.metadata[UNFREEZE_META_KEY] !== undefined) {
    // Fine-tuned blocks over the original weights; fed as in training (the whole patch, bilinear).
    const m = FineTunedEncoder.fromStateDict(engine, ck.tensors, {
      weights: tensors,
      build: (w) => buildEncoder(engine, rec.kind, w, rec.config, given),
      file: path,
    });
    const enc = m.encoder;
    const model: PredictModel = {
      engine,
      config: m.config,
      inputSize: enc.inputSize,
      mean: enc.mean,
      std: enc.std,
      predict: (x) => {
        const o = m.predict(x);
        o.features.dispose();
        return o;
      },
      dispose: () => m.dispose(),
    };
    const genes = (k: string) => (ck.metadata[k] ? JSON.parse(ck.metadata[k]) as string[] : undefined);
    return { model, targetGenes: genes("target_genes"), auxGenes: genes("aux_genes"), format: ck.format };
  }
  const enc = buildEncoder(engine, rec.kind, tensors, rec.config, given);
  try {
    const h = headsFromTensors(engine, ck, enc, path);
    return {
      model: h.model as EncoderHeads,
      targetGenes: h.targetGenes,
      auxGenes: h.auxGenes,
      format: ck.format,
    };
  } catch (e) {
    enc.dispose();
    throw e;
  }
}
