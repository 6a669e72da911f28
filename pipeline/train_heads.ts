/**
 * Training HE2Gene's three heads on a frozen encoder (issue 17 item 4): every spot's features are computed
 * once ({@linkcode encodeImages}, in the encoder's own preprocessing), then {@linkcode trainHeads} trains the
 * heads ({@linkcode EncoderHeads}) on them with HE2Gene's loss (target MSE + aux·aux MSE + tmr·BCE on the
 * labelled spots) and optimiser (Adam with L2 weight decay, StepLR per epoch, global gradient-norm clipping),
 * validating every epoch and stopping early on the validation target MSE — the loop of pipeline/train.ts,
 * with its {@linkcode TrainStore}, checkpoints, exact resume and interrupts, on feature rows instead of
 * images (no augmentation: the features are of the patches as cut).
 *
 * `ridge`: the gene heads (target and aux) are fitted in closed form ({@linkcode fitRidgeHeads}, once, before
 * the loop) and only the tumour head — a logistic regression on the same features, it is a classifier — is
 * trained by the Adam loop.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { backward, clearGraph } from "../engine/autograd.ts";
import { mulberry32 } from "../engine/random.ts";
import { add, mul } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { bceLoss, mseLoss } from "../ops/loss.ts";
import { Adam, StepLR } from "../kernels/optim.ts";
import { type Encoder, EncoderHeads, type EncoderHeadsConfig, type HostTensor } from "../model/mod.ts";
import { DEFAULT_TRAIN, type TrainConfig } from "../model/train.ts";
import { fitRidge } from "../model/ridge.ts";
import { type RgbImage, uploadImages } from "../slide/mod.ts";
import { encoderInput } from "./encoder_input.ts";
import { assertFinite, type TensorEntry, toFloat32 } from "../weights/mod.ts";
import { type EncoderRecord, headsCheckpoint } from "./checkpoint.ts";
import {
  type CheckpointEntries,
  type EpochLog,
  scoreTable,
  type SpotTable,
  TrainingInterrupted,
  type TrainStore,
} from "./train.ts";

/**
 * The defaults of training heads on frozen features: HE2Gene's, but lr 1e-3. The original's 1e-5 fine-tunes
 * a pretrained ResNet; a freshly initialised linear probe on fixed features moves ~lr per Adam step, so at
 * 1e-5 its weights would need thousands of epochs to reach their scale (≈ 1/√D); 1e-3 is Adam's usual rate
 * for probes and converges in tens of epochs, with StepLR halving it every 10.
 */
export const DEFAULT_HEADS_TRAIN: TrainConfig = { ...DEFAULT_TRAIN, lr: 1e-3 };

/** Spots with their features: a {@linkcode SpotTable} (patches may be empty) and an (N, D) matrix. */
export interface FeatureTable extends SpotTable {
  /** (N, dim), row-major. */
  features: Float32Array;
  dim: number;
}

/**
 * Encode images with an encoder: uploaded, brought to its input as `embedPatches` does (`encoderInput`:
 * timm's eval transform for a ViT, else PIL's bilinear to its size; its mean and std) — in batches of one size. A non-finite feature is an error
 * naming the image. Returns (N, D) row-major.
 *
 * @example
 * ```ts
 * const f = await encodeImages(engine, encoder, patches, { batchSize: 32, names });
 * ```
 */
export async function encodeImages(
  engine: Engine,
  encoder: Encoder,
  images: RgbImage[],
  o: {
    batchSize: number;
    names?: readonly string[];
    onProgress?: (done: number, total: number) => void;
    interrupt?: () => void;
  },
): Promise<Float32Array> {
  const N = images.length, D = encoder.dim;
  const out = new Float32Array(N * D);
  for (let b0 = 0; b0 < N; b0 += o.batchSize) {
    o.interrupt?.();
    const batch = images.slice(b0, b0 + o.batchSize);
    // Images of one size together (cut patches all have one).
    const sizes = new Map<string, number[]>();
    batch.forEach((im, i) => {
      const k = `${im.width}x${im.height}`;
      sizes.set(k, [...(sizes.get(k) ?? []), i]);
    });
    for (const idx of sizes.values()) {
      const f = await engine.scope(async () => {
        const src = uploadImages(engine, idx.map((i) => batch[i]));
        const x = encoderInput(encoder, src);
        src.dispose();
        return await encoder.features(x).toArray();
      });
      idx.forEach((i, j) => {
        const row = f.subarray(j * D, (j + 1) * D);
        const bad = row.findIndex((v) => !Number.isFinite(v));
        if (bad >= 0) {
          throw new Error(
            `Cannot encode ${o.names?.[b0 + i] ?? `image ${b0 + i}`}: feature ${bad} is ${row[bad]} ` +
              `(the weights or the image give non-finite values)`,
          );
        }
        out.set(row, (b0 + i) * D);
      });
    }
    o.onProgress?.(Math.min(b0 + o.batchSize, N), N);
  }
  return out;
}

/** Options of {@linkcode trainHeads}. */
export interface TrainHeadsOptions {
  /** The heads' kind and sizes (`dim` = the features'). */
  heads: EncoderHeadsConfig;
  train: TrainConfig;
  batchSize: number;
  epochs: number;
  patience: number;
  seed: number;
  store: TrainStore;
  /** The encoder the features came from (recorded in every checkpoint). */
  encoder: EncoderRecord;
  /** Names the features (hash of the encoder, config, crop, stain, sections): part of the run's identity. */
  featureKey: string;
  /** Continue the run whose checkpoint this is (`from` names the run, `file` the checkpoint). */
  resume?: CheckpointEntries & { from: string; file: string };
  /**
   * `ridge` only: the gene heads' closed-form fit (weights [K, D] and biases [K] of target then aux rows),
   * see {@linkcode fitRidgeHeads}.
   */
  ridge?: {
    target: { weight: Float32Array; bias: Float32Array };
    aux: { weight: Float32Array; bias: Float32Array };
  };
  onEpochStart?: (p: { epoch: number; epochs: number; steps: number; step: number }) => void;
  onStep?: (p: { epoch: number; step: number; steps: number; loss: number }) => void;
  onMessage?: (line: string) => void;
  onEpoch?: (log: EpochLog) => void;
  /** Polled after every step: true saves a checkpoint and throws {@linkcode TrainingInterrupted}. */
  interrupt?: () => boolean;
}

const mix = (...xs: number[]) =>
  xs.reduce((h, x) => Math.imul(h ^ (x + 0x9e3779b9), 0x85ebca6b) >>> 0, 0x12345);

function rows(a: Float32Array, width: number, idx: readonly number[]): Float32Array {
  const out = new Float32Array(idx.length * width);
  idx.forEach((i, r) => out.set(a.subarray(i * width, (i + 1) * width), r * width));
  return out;
}

/** Column means of an (N, W) matrix. */
function colMeans(a: Float32Array, w: number): Float32Array {
  const m = new Float64Array(w);
  const n = a.length / w;
  for (let i = 0; i < a.length; i++) m[i % w] += a[i];
  return Float32Array.from(m, (s) => s / n);
}

/** Eval predictions of heads on a feature table (chunks of 1024 rows). */
export async function predictFeatureTable(
  model: EncoderHeads,
  t: FeatureTable,
): Promise<{ target: Float32Array; aux: Float32Array; tumorProb: Float32Array }> {
  const e = model.engine, N = t.names.length, D = t.dim;
  const nT = model.config.targetGenes, nA = model.config.auxGenes;
  const out = {
    target: new Float32Array(N * nT),
    aux: new Float32Array(N * nA),
    tumorProb: new Float32Array(N),
  };
  for (let b0 = 0; b0 < N; b0 += 1024) {
    const b = Math.min(1024, N - b0);
    const x = e.tensor(t.features.subarray(b0 * D, (b0 + b) * D), [b, D]);
    const p = model.predictFeatures(x);
    x.dispose();
    const [ta, aa, pa] = await Promise.all([p.target.toArray(), p.aux.toArray(), p.tumorProb.toArray()]);
    for (const v of Object.values(p)) v.dispose();
    out.target.set(ta, b0 * nT);
    out.aux.set(aa, b0 * nA);
    out.tumorProb.set(pa, b0);
  }
  return out;
}

interface Progressed {
  epoch: number;
  step: number;
  bestScore: number;
  bestEpoch: number;
  bad: number;
  sums?: { total: number; target: number; aux: number; tumor: number; done: number; seconds: number };
}

/**
 * Train (or continue training) heads on feature tables. Returns the heads with the best validation weights
 * (no encoder), the log of every epoch and the best epoch.
 *
 * @example
 * ```ts
 * const { model, best } = await trainHeads(engine, train, val, {
 *   heads: { dim: 2048, targetGenes: 250, auxGenes: 750, head: "linear" }, train: DEFAULT_HEADS_TRAIN,
 *   batchSize: 256, epochs: 100, patience: 10, seed: 0, store: memoryTrainStore(), encoder, featureKey,
 * });
 * ```
 */
export async function trainHeads(
  engine: Engine,
  train: FeatureTable,
  val: FeatureTable,
  o: TrainHeadsOptions,
): Promise<{ model: EncoderHeads; history: EpochLog[]; best: { epoch: number; valMse: number } }> {
  const store = o.store;
  const cfg = { ...DEFAULT_HEADS_TRAIN, ...o.train };
  const ridge = o.heads.head === "ridge";
  if (ridge && !o.ridge && !o.resume) {
    throw new Error("Cannot train ridge heads: their closed-form fit (ridge) is missing");
  }
  const runKey = JSON.stringify({
    heads: o.heads,
    train: cfg,
    batchSize: o.batchSize,
    seed: o.seed,
    features: o.featureKey,
  });
  const N = train.names.length, D = train.dim, nT = train.targetGenes.length, nA = train.auxGenes.length;
  if (N < 1) throw new Error("Cannot train heads on no spots");

  let model: EncoderHeads;
  let state: Progressed = { epoch: 0, step: 0, bestScore: Infinity, bestEpoch: -1, bad: 0 };
  let optState: Map<string, { data: Float32Array; shape: number[] }> | null = null;
  const history: EpochLog[] = [];
  if (o.resume) {
    const ck = o.resume;
    assertFinite(ck.tensors, ck.file);
    if (ck.metadata.run !== runKey) {
      throw new Error(
        `Cannot resume from ${ck.from}: it was written by another configuration.\n  theirs: ${ck.metadata.run}\n  ours:   ${runKey}`,
      );
    }
    const sd = new Map<string, HostTensor>();
    optState = new Map();
    for (const [k, t] of ck.tensors) {
      const v = { shape: t.shape, data: toFloat32(t).slice() };
      if (k.startsWith("optim/")) optState.set(k.slice(6), v);
      else sd.set(k, v);
    }
    model = EncoderHeads.fromStateDict(engine, sd, { head: o.heads.head, file: ck.file });
    state = JSON.parse(ck.metadata.progress);
    if (typeof state.bestScore !== "number") state.bestScore = Infinity;
    history.push(...(JSON.parse(ck.metadata.history) as Record<string, number | null>[]).map((h) => {
      const r: Record<string, number> = {};
      for (const [k, x] of Object.entries(h)) r[k] = x === null ? NaN : x;
      return r as unknown as EpochLog;
    }));
    history.splice(state.epoch);
    await store.writeLog(history, { resumed: true });
  } else {
    model = EncoderHeads.init(engine, o.heads, o.seed, {
      // The gene heads start at the training means (as `biasFromMeans` for fresh HE2Gene heads).
      target: ridge ? undefined : colMeans(train.target, nT),
      aux: ridge ? undefined : colMeans(train.aux, nA),
    });
    if (ridge) {
      const set = (key: string, data: Float32Array, shape: number[]) => {
        model.params.get(key)!.dispose();
        model.params.set(key, engine.tensor(data, shape).keep());
      };
      set("fc1.weight", o.ridge!.target.weight, [nT, D]);
      set("fc1.bias", o.ridge!.target.bias, [nT]);
      set("fc2.weight", o.ridge!.aux.weight, [nA, D]);
      set("fc2.bias", o.ridge!.aux.bias, [nA]);
    }
    await store.writeLog([], { resumed: false });
  }
  // Ridge: only the tumour head (fc3) is trained; its gene heads are fixed.
  const trained = new Map([...model.params].filter(([k]) => !ridge || k.startsWith("fc3.")));
  for (const [k, t] of model.params) if (!trained.has(k)) t.requiresGrad = false;
  const opt = new Adam(trained, { lr: cfg.lr, weightDecay: cfg.weightDecay });
  const schedule = new StepLR(opt, { stepSize: cfg.stepSize, gamma: cfg.gamma });
  if (optState) opt.loadStateDict(optState);

  const steps = Math.ceil(N / o.batchSize);
  const interrupted = o.interrupt ?? (() => false);
  const f32 = (d: Float32Array) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  const save = async () => {
    const tensors = new Map<string, TensorEntry>();
    for (const [k, t] of await model.stateDict()) {
      tensors.set(k, { dtype: "F32", shape: t.shape, bytes: f32(t.data) });
    }
    for (const [k, t] of await opt.stateDict()) {
      tensors.set(`optim/${k}`, { dtype: "F32", shape: t.shape, bytes: f32(t.data) });
    }
    await store.saveCheckpoint({
      tensors,
      metadata: { run: runKey, progress: JSON.stringify(state), history: JSON.stringify(history) },
    });
  };

  // One step: forward on the batch's feature rows, HE2Gene's loss, backward, clip, Adam.
  const step = async (idx: number[]) => {
    const b = idx.length;
    const x = engine.tensor(rows(train.features, D, idx), [b, D]);
    const target = engine.tensor(rows(train.target, nT, idx), [b, nT]);
    const aux = engine.tensor(rows(train.aux, nA, idx), [b, nA]);
    const labelled = idx.map((i, r) => [train.tumor[i], r]).filter(([v]) => v >= 0);
    const parts = engine.scope(() => {
      const out = model.forward(x);
      const zero = () => engine.zeros([1]);
      // Ridge: the gene heads are fixed; their losses are reported, not trained.
      const lt = mseLoss(out.target, target), la = mseLoss(out.aux, aux);
      let total: Tensor = ridge ? zero() : add(lt, mul(la, cfg.auxWeight));
      let lm: Tensor | null = null;
      if (labelled.length > 0 && cfg.tmrWeight > 0) {
        const sl = new Float32Array(labelled.length * b);
        labelled.forEach(([, r], k) => (sl[k * b + r] = 1));
        const sel = labelled.length === b
          ? out.tumorProb
          : matmul(engine.tensor(sl, [labelled.length, b]), out.tumorProb);
        lm = bceLoss(sel, engine.tensor(Float32Array.from(labelled, ([v]) => v), [labelled.length, 1]));
        total = add(total, mul(lm, cfg.tmrWeight));
      }
      return { total, lt, la, lm };
    });
    // (Ridge with no labelled spot in the batch: nothing to train.)
    if (!ridge || parts.lm) {
      await backward(parts.total);
      opt.step({ clipNorm: cfg.clipNorm })?.dispose();
    }
    opt.zeroGrad();
    clearGraph();
    const v = await Promise.all(
      [parts.total, parts.lt, parts.la, parts.lm].map((t) => t ? t.toArray() : [0]),
    );
    for (const t of [x, target, aux, ...Object.values(parts)]) t?.dispose();
    return { total: v[0][0], target: v[1][0], aux: v[2][0], tumor: v[3][0] };
  };

  try {
    for (; state.epoch < o.epochs; state.epoch++, state.step = 0) {
      const lr = schedule.setEpoch(state.epoch);
      const shuffle = mulberry32(mix(o.seed, state.epoch));
      const perm = [...Array(N).keys()];
      for (let i = N - 1; i > 0; i--) {
        const j = Math.floor(shuffle() * (i + 1));
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      o.onEpochStart?.({ epoch: state.epoch, epochs: o.epochs, steps, step: state.step });
      const te = performance.now();
      const sums = state.step > 0 && state.sums
        ? { ...state.sums }
        : { total: 0, target: 0, aux: 0, tumor: 0, done: 0, seconds: 0 };
      const before = sums.seconds;
      state.sums = sums;
      for (; state.step < steps; state.step++) {
        const l = await step(perm.slice(state.step * o.batchSize, (state.step + 1) * o.batchSize));
        if (!Number.isFinite(l.total)) {
          throw new Error(
            `The loss became ${l.total} at epoch ${state.epoch + 1}, step ${state.step + 1} ` +
              `(target ${l.target}, aux ${l.aux}, tumour ${l.tumor}); lower --lr`,
          );
        }
        for (const k of ["total", "target", "aux", "tumor"] as const) sums[k] += l[k];
        sums.done++;
        sums.seconds = before + (performance.now() - te) / 1000;
        o.onStep?.({ epoch: state.epoch, step: state.step + 1, steps, loss: l.total });
        if (interrupted()) {
          state.step++;
          await save();
          throw new TrainingInterrupted(`at epoch ${state.epoch + 1}, step ${state.step} of ${steps}`);
        }
      }
      const p = await predictFeatureTable(model, val);
      const s = scoreTable(val, p);
      const done = Math.max(sums.done, 1);
      const log: EpochLog = {
        epoch: state.epoch + 1,
        lr,
        trainLoss: sums.total / done,
        trainTarget: sums.target / done,
        trainAux: sums.aux / done,
        trainTumor: sums.tumor / done,
        trainSpat: 0,
        valMse: s.mse,
        valPearsonMean: s.pearsonMean,
        valPearsonMedian: s.pearsonMedian,
        valTumorAuc: s.tumorAuc,
        seconds: before + (performance.now() - te) / 1000,
      };
      history.push(log);
      o.onMessage?.(
        `epoch ${log.epoch}: loss ${log.trainLoss.toFixed(4)}, val MSE ${log.valMse.toFixed(4)}, ` +
          `Pearson r mean ${log.valPearsonMean.toFixed(3)} / median ${log.valPearsonMedian.toFixed(3)}, ` +
          `tumour AUC ${log.valTumorAuc.toFixed(3)}, ${log.seconds.toFixed(1)} s`,
      );
      // Ridge: the target MSE cannot change (the gene heads are fixed): the tumour head's validation BCE
      // chooses its epoch (the target MSE when no validation spot is labelled).
      const bce = ridge ? tumourBce(val.tumor, p.tumorProb) : NaN;
      const score = Number.isFinite(bce) ? bce : s.mse;
      if (score < state.bestScore) {
        state.bestScore = score;
        state.bestEpoch = state.epoch + 1;
        state.bad = 0;
        await store.saveBest(
          await headsCheckpoint(model, {
            encoder: o.encoder,
            targetGenes: train.targetGenes,
            auxGenes: train.auxGenes,
            metadata: { epoch: String(state.epoch + 1), val_mse: String(s.mse) },
          }),
        );
      } else {
        state.bad++;
      }
      const stop = state.bad >= o.patience;
      state.epoch++;
      state.step = 0;
      state.sums = undefined;
      await save();
      await store.appendLog(log);
      o.onEpoch?.(log);
      state.epoch--;
      if (stop) {
        o.onMessage?.(`early stop: no better validation MSE for ${o.patience} epochs`);
        state.epoch++;
        break;
      }
      if (state.epoch + 1 < o.epochs && interrupted()) {
        throw new TrainingInterrupted(`after epoch ${state.epoch + 1}`);
      }
    }
  } finally {
    opt.dispose();
    clearGraph();
  }
  model.dispose();
  return {
    model: EncoderHeads.fromStateDict(engine, await store.loadBest(), {
      head: o.heads.head,
      file: "best.safetensors",
    }),
    history,
    best: { epoch: state.bestEpoch, valMse: history[state.bestEpoch - 1]?.valMse ?? NaN },
  };
}

/** Mean binary cross-entropy of probabilities against labels 1/0 (−1: unknown, left out); NaN if none. */
function tumourBce(labels: Int8Array, prob: Float32Array): number {
  let s = 0, n = 0;
  labels.forEach((y, i) => {
    if (y < 0) return;
    const p = Math.min(Math.max(prob[i], 1e-7), 1 - 1e-7);
    s -= y ? Math.log(p) : Math.log(1 - p);
    n++;
  });
  return n ? s / n : NaN;
}

/**
 * The gene heads of `--head ridge` in closed form: `fitRidge` (model/ridge.ts) on the training features
 * against [targets | aux], the regularisation chosen on the validation spots by the target genes' MSE
 * (`selectColumns`). Returns the target and aux rows apart, and the chosen lambda.
 *
 * @example
 * ```ts
 * const fit = await fitRidgeHeads(engine, train, val);
 * await trainHeads(engine, train, val, { ...o, heads: { ...o.heads, head: "ridge" }, ridge: fit });
 * ```
 */
export async function fitRidgeHeads(
  engine: Engine,
  train: FeatureTable,
  val: FeatureTable,
  o: { lambdas?: number[]; onProgress?: (done: number, total: number) => void } = {},
): Promise<{
  target: { weight: Float32Array; bias: Float32Array };
  aux: { weight: Float32Array; bias: Float32Array };
  lambda: number;
  lambdas: number[];
  valMse: number[];
}> {
  const nT = train.targetGenes.length, nA = train.auxGenes.length, D = train.dim;
  const both = (t: FeatureTable) => {
    const n = t.names.length, y = new Float32Array(n * (nT + nA));
    for (let i = 0; i < n; i++) {
      y.set(t.target.subarray(i * nT, (i + 1) * nT), i * (nT + nA));
      y.set(t.aux.subarray(i * nA, (i + 1) * nA), i * (nT + nA) + nT);
    }
    return y;
  };
  const N = train.names.length, V = val.names.length;
  const x = engine.tensor(train.features, [N, D]), y = engine.tensor(both(train), [N, nT + nA]);
  const xVal = engine.tensor(val.features, [V, D]), yVal = engine.tensor(both(val), [V, nT + nA]);
  try {
    const r = await fitRidge(engine, x, y, {
      lambdas: o.lambdas,
      xVal,
      yVal,
      selectColumns: nT,
      onProgress: o.onProgress,
    });
    return {
      target: { weight: r.weight.slice(0, nT * D), bias: r.bias.slice(0, nT) },
      aux: { weight: r.weight.slice(nT * D), bias: r.bias.slice(nT) },
      lambda: r.lambda,
      lambdas: r.lambdas,
      valMse: r.valMse,
    };
  } finally {
    for (const t of [x, y, xVal, yVal]) t.dispose();
  }
}
