/**
 * Training as a library: the loop over spots held in memory — batches (with each neighbour drawn and
 * augmented independently for HE2Gene-Spat), StepLR per epoch, validation each epoch (target MSE, Pearson r
 * over target genes, tumour AUC), early stopping — with everything it keeps going through a
 * {@linkcode TrainStore} (the CLI's writes files, {@linkcode memoryTrainStore} keeps them in memory):
 * the checkpoint (model, Adam state, epoch/step, best score, the running loss sums of the epoch in
 * progress, and every finished epoch's log line) after every epoch and when interrupted, the best model
 * for the best validation score, and the log of epochs. `resume` continues a run from its checkpoint
 * exactly: shuffling and augmentation are seeded by (seed, epoch, step), so a resumed run repeats the same
 * batches as an uninterrupted one, and the log is rewritten from the checkpoint's history. Progress goes
 * through callbacks; `interrupt` (polled after every step) stops it with {@linkcode TrainingInterrupted}.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { mulberry32 } from "../engine/random.ts";
import { HE2Gene, type HE2GeneConfig, HEAD_KEYS, type HostTensor } from "../model/mod.ts";
import {
  DEFAULT_TRAIN,
  predictEval,
  type TrainableModel,
  type TrainConfig,
  Trainer,
} from "../model/train.ts";
import { pearsonPerGene, rocAuc } from "../model/metrics.ts";
import type { RgbImage } from "../slide/decode.ts";
import { assembleBatch } from "../slide/batch.ts";
import { assertFinite, type TensorEntry, toFloat32 } from "../weights/mod.ts";
import { modelCheckpoint } from "./checkpoint.ts";

/** Spots in memory: one patch each, truths, tumour labels (1/0, −1 unknown), grid positions. */
export interface SpotTable {
  names: string[];
  sections: string[];
  grid: [number, number][];
  patches: RgbImage[];
  targetGenes: string[];
  auxGenes: string[];
  /** (N, targetGenes) log1p-normalised. */
  target: Float32Array;
  /** (N, auxGenes) */
  aux: Float32Array;
  tumor: Int8Array;
}

/** One line of the JSON-lines log. */
export interface EpochLog {
  epoch: number;
  lr: number;
  trainLoss: number;
  trainTarget: number;
  trainAux: number;
  trainTumor: number;
  trainSpat: number;
  valMse: number;
  valPearsonMean: number;
  valPearsonMedian: number;
  valTumorAuc: number;
  seconds: number;
}

const rng = mulberry32;

const mix = (...xs: number[]) =>
  xs.reduce((h, x) => Math.imul(h ^ (x + 0x9e3779b9), 0x85ebca6b) >>> 0, 0x12345);

/** The (up to 8) grid neighbours of every spot within its section. */
export function neighbours(t: SpotTable): number[][] {
  const at = new Map<string, number>();
  t.grid.forEach(([x, y], i) => at.set(`${t.sections[i]}:${x}:${y}`, i));
  return t.grid.map(([x, y], i) => {
    const out: number[] = [];
    for (let dy = -1; dy <= 1; dy++) {
      for (let dx = -1; dx <= 1; dx++) {
        if (dx === 0 && dy === 0) continue;
        const j = at.get(`${t.sections[i]}:${x + dx}:${y + dy}`);
        if (j !== undefined) out.push(j);
      }
    }
    return out;
  });
}

function rows(a: Float32Array, width: number, idx: number[]): Float32Array {
  const out = new Float32Array(idx.length * width);
  idx.forEach((i, r) => out.set(a.subarray(i * width, (i + 1) * width), r * width));
  return out;
}

/** What {@linkcode predictTable} predicts with: HE2Gene, or an encoder fine-tuned under its heads. */
export type TableModel = TrainableModel & {
  readonly engine: Engine;
  readonly config: { readonly targetGenes: number; readonly auxGenes: number };
};

/** Eval-mode predictions for every spot of a table (batched, no augmentation). */
export async function predictTable(
  model: TableModel,
  t: SpotTable,
  o: {
    batchSize: number;
    imageSize: number;
    mean?: [number, number, number];
    std?: [number, number, number];
  },
): Promise<{ target: Float32Array; aux: Float32Array; tumorProb: Float32Array }> {
  const e = model.engine;
  const N = t.names.length, nT = model.config.targetGenes, nA = model.config.auxGenes;
  const out = {
    target: new Float32Array(N * nT),
    aux: new Float32Array(N * nA),
    tumorProb: new Float32Array(N),
  };
  for (let b0 = 0; b0 < N; b0 += o.batchSize) {
    const idx = [...Array(Math.min(o.batchSize, N - b0)).keys()].map((k) => b0 + k);
    const x = assembleBatch(e, idx.map((i) => t.patches[i]), { size: o.imageSize, mean: o.mean, std: o.std });
    const p = await predictEval(model, x);
    x.dispose();
    out.target.set(p.target, b0 * nT);
    out.aux.set(p.aux, b0 * nA);
    out.tumorProb.set(p.tumorProb, b0);
  }
  return out;
}

/** Validation metrics of predictions against a table. */
export function scoreTable(
  t: SpotTable,
  p: { target: Float32Array; tumorProb: Float32Array },
): { mse: number; pearsonMean: number; pearsonMedian: number; tumorAuc: number } {
  const N = t.names.length, G = t.targetGenes.length;
  let se = 0;
  for (let i = 0; i < N * G; i++) se += (p.target[i] - t.target[i]) ** 2;
  const r = [...pearsonPerGene(p.target, t.target, N, G)].filter((v) => Number.isFinite(v)).sort((a, b) =>
    a - b
  );
  const known = [...t.tumor.keys()].filter((i) => t.tumor[i] >= 0);
  const auc = known.length
    ? rocAuc(Float64Array.from(known, (i) => p.tumorProb[i]), known.map((i) => t.tumor[i] === 1))
    : NaN;
  return {
    mse: se / (N * G),
    pearsonMean: r.length ? r.reduce((a, b) => a + b, 0) / r.length : NaN,
    pearsonMedian: r.length
      ? r[Math.floor((r.length - 1) / 2)] * 0.5 + r[Math.ceil((r.length - 1) / 2)] * 0.5
      : NaN,
    tumorAuc: auc,
  };
}

/** Running sums of the epoch in progress (so a resumed epoch's means cover all its steps). */
interface EpochSums {
  total: number;
  target: number;
  aux: number;
  tumor: number;
  spat: number;
  /** Steps summed. */
  done: number;
  /** Seconds spent on the epoch so far. */
  seconds: number;
}

interface Progressed {
  epoch: number;
  step: number;
  bestScore: number;
  bestEpoch: number;
  bad: number;
  /** Sums of the steps of epoch `epoch` before `step` (absent in checkpoints of older versions). */
  sums?: EpochSums;
}

const zeroSums = (): EpochSums => ({ total: 0, target: 0, aux: 0, tumor: 0, spat: 0, done: 0, seconds: 0 });

/** Log lines as JSON keeps them: NaN / ±Infinity became null; read them back as NaN. */
function parseEpochLog(v: Record<string, number | null>): EpochLog {
  const out: Record<string, number> = {};
  for (const [k, x] of Object.entries(v)) out[k] = x === null ? NaN : x;
  return out as unknown as EpochLog;
}

/** Safetensors entries and their metadata, as a checkpoint file holds them. */
export interface CheckpointEntries {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

/** Where a training run keeps its checkpoint, its best model and its log (see {@linkcode trainSpots}). */
export interface TrainStore {
  /** Keep the run's checkpoint (replacing the last one); the metadata carry the progress. */
  saveCheckpoint(ck: CheckpointEntries): Promise<void>;
  /** Keep the best model so far (replacing the last one): `modelCheckpoint`'s entries and metadata. */
  saveBest(ck: CheckpointEntries): Promise<void>;
  /** The tensors of the best model last kept (read once, at the end). */
  loadBest(): Promise<Map<string, HostTensor>>;
  /** Start the log over with these epochs: none for a fresh run, the checkpoint's on a resume. */
  writeLog(history: EpochLog[], o: { resumed: boolean }): Promise<void>;
  /** Add one finished epoch to the log. */
  appendLog(log: EpochLog): Promise<void>;
}

/**
 * What {@linkcode trainSpots} trains, when not HE2Gene (`TrainSpotsOptions.model`): how to make the model,
 * rebuild it from a state dict (a resumed checkpoint's, or the best one's at the end) and write its best
 * checkpoint. E.g. an encoder fine-tuned under HE2Gene's heads (model/finetune.ts).
 */
export interface SpotModel<M extends TableModel & { dispose(): void }> {
  /** Identifies the model in the run's key (a resume must match it). */
  readonly describe: unknown;
  /** A fresh model. */
  init(): M;
  /** The model from a state dict: `trainable` to go on training (a resume), else to predict (the best). */
  fromStateDict(sd: Map<string, HostTensor>, file: string, o: { trainable: boolean }): M;
  stateDict(model: M): Promise<Map<string, HostTensor>>;
  /** The best model's entries and metadata (genes and `extra.metadata` included). */
  checkpoint(
    model: M,
    extra: { targetGenes: string[]; auxGenes: string[]; metadata: Record<string, string> },
  ): Promise<CheckpointEntries>;
}

/** Options of {@linkcode trainSpots}. */
export interface TrainSpotsOptions<M extends TableModel & { dispose(): void } = HE2Gene> {
  config: HE2GeneConfig;
  train: TrainConfig;
  batchSize: number;
  epochs: number;
  patience: number;
  imageSize: number;
  seed: number;
  store: TrainStore;
  /**
   * Continue the run whose checkpoint this is (`from` names the run, `file` the checkpoint, in errors).
   * `olderLog` gives the log text for checkpoints of versions that kept no history in them.
   */
  resume?: CheckpointEntries & { from: string; file: string; olderLog?: () => Promise<string> };
  /** Initial state dict (fine-tuning), keyed as the model's. */
  init?: Map<string, HostTensor>;
  /**
   * Initial backbone weights (torchvision keys, of `config.backbone`; `torchvisionResNet`), with fresh heads:
   * the original's `pretrained=True`.
   */
  initBackbone?: Map<string, HostTensor>;
  /**
   * Start the target and aux heads' biases at the training means (a data-dependent init that spares the
   * first epochs from learning the offset; only for fresh models).
   */
  biasFromMeans?: boolean;
  /** Called at the start of each epoch (0-based) with its steps and the step it starts at (a resume's). */
  onEpochStart?: (p: { epoch: number; epochs: number; steps: number; step: number }) => void;
  /** Called after each step with the steps done in the epoch and the step's loss. */
  onStep?: (p: { epoch: number; step: number; steps: number; loss: number }) => void;
  /** Lines for the user: each epoch's summary after its validation, and an early stop. */
  onMessage?: (line: string) => void;
  /** Called after each epoch's validation, checkpoint and log line, with its log line. */
  onEpoch?: (log: EpochLog) => void;
  /**
   * Polled after every step and after every epoch but the last: true saves a checkpoint (resumable
   * mid-epoch; at an epoch's end it is saved already) and throws {@linkcode TrainingInterrupted}.
   */
  interrupt?: () => boolean;
  /** Activation checkpointing of the backbone (less memory, a recomputed forward; the same numbers). */
  checkpoint?: boolean;
  /** Normalisation constants (default HE2Gene's). */
  mean?: [number, number, number];
  std?: [number, number, number];
  /**
   * Another model than HE2Gene (`config`, `init`, `initBackbone`, `biasFromMeans` and `checkpoint` then do
   * not apply; `config` still names the gene counts and variant in the run's key).
   */
  model?: SpotModel<M>;
}

// HE2Gene as trainSpots has always trained it: --init, a pretrained backbone, or fresh (heads' biases at the
// training means on request).
function he2geneSpotModel(engine: Engine, o: TrainSpotsOptions, train: SpotTable): SpotModel<HE2Gene> {
  return {
    describe: "he2gene",
    init() {
      if (o.init) return HE2Gene.fromStateDict(engine, o.init, "--init");
      const model = HE2Gene.init(engine, o.config, o.seed, o.initBackbone);
      if (o.biasFromMeans) {
        const mean = (v: Float32Array, w: number) => {
          const m = new Float32Array(w);
          for (let i = 0; i < v.length; i++) m[i % w] += v[i] / (v.length / w);
          return m;
        };
        const h = HEAD_KEYS[o.config.variant];
        for (
          const [key, v, w] of [[h.target, train.target, train.targetGenes.length], [
            h.aux,
            train.aux,
            train.auxGenes.length,
          ]] as const
        ) {
          model.params.get(`${key}.bias`)!.dispose();
          model.params.set(`${key}.bias`, engine.tensor(mean(v, w), [w], { requiresGrad: true }).keep());
        }
      }
      return model;
    },
    fromStateDict: (sd, file) => HE2Gene.fromStateDict(engine, sd, file),
    stateDict: (m) => m.stateDict(),
    checkpoint: (m, extra) => modelCheckpoint(m, extra),
  };
}

/** Training stopped by `interrupt`, its checkpoint saved; `where` says where (`at epoch 2, step 3 of 9`). */
export class TrainingInterrupted extends Error {
  constructor(readonly where: string) {
    super(`training stopped ${where}`);
    this.name = "TrainingInterrupted";
  }
}

/**
 * A {@linkcode TrainStore} in memory: the last checkpoint, the best model's entries and the log lines.
 *
 * @example
 * ```ts
 * const store = memoryTrainStore();
 * const { model } = await trainSpots(engine, train, val, { ...opts, store });
 * console.log(store.log.length, store.best?.metadata.epoch);
 * ```
 */
export function memoryTrainStore(): TrainStore & {
  checkpoint: CheckpointEntries | null;
  best: CheckpointEntries | null;
  log: EpochLog[];
} {
  return {
    checkpoint: null,
    best: null,
    log: [],
    saveCheckpoint(ck) {
      this.checkpoint = ck;
      return Promise.resolve();
    },
    saveBest(ck) {
      this.best = ck;
      return Promise.resolve();
    },
    loadBest() {
      if (!this.best) return Promise.reject(new Error("Cannot load the best model: none was kept"));
      const sd = new Map<string, HostTensor>();
      for (const [k, t] of this.best.tensors) sd.set(k, { shape: t.shape, data: toFloat32(t).slice() });
      return Promise.resolve(sd);
    },
    writeLog(history) {
      this.log = [...history];
      return Promise.resolve();
    },
    appendLog(log) {
      this.log.push(log);
      return Promise.resolve();
    },
  };
}

/**
 * Train (or continue training) a model on spots in memory. Returns the model with the best validation
 * weights loaded, the log of every epoch and the best epoch.
 *
 * @example
 * ```ts
 * const { model, best } = await trainSpots(engine, train, val, {
 *   config, train: DEFAULT_TRAIN, batchSize: 8, epochs: 10, patience: 3, imageSize: 224, seed: 0,
 *   store: memoryTrainStore(), onEpoch: (log) => console.log(log.epoch, log.valMse),
 * });
 * ```
 */
export async function trainSpots<M extends TableModel & { dispose(): void } = HE2Gene>(
  engine: Engine,
  train: SpotTable,
  val: SpotTable,
  o: TrainSpotsOptions<M>,
): Promise<{ model: M; history: EpochLog[]; best: { epoch: number; valMse: number } }> {
  const store = o.store;
  const cfg = { ...DEFAULT_TRAIN, ...o.train };
  const adapter =
    (o.model ?? he2geneSpotModel(engine, o as unknown as TrainSpotsOptions, train)) as SpotModel<M>;
  const runKey = JSON.stringify({
    config: o.config,
    train: cfg,
    batchSize: o.batchSize,
    imageSize: o.imageSize,
    seed: o.seed,
    ...(o.model ? { model: o.model.describe } : {}),
  });

  let model: M;
  let state: Progressed = { epoch: 0, step: 0, bestScore: Infinity, bestEpoch: -1, bad: 0 };
  let optState: Map<string, { data: Float32Array; shape: number[] }> | null = null;
  const history: EpochLog[] = [];
  if (o.resume) {
    const ck = o.resume;
    assertFinite(ck.tensors, ck.file); // NaN / Inf weights (e.g. saved after training diverged)
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
    model = adapter.fromStateDict(sd, ck.file, { trainable: true });
    state = JSON.parse(ck.metadata.progress);
    // JSON has no Infinity: a checkpoint saved before the first validation holds null.
    if (typeof state.bestScore !== "number") state.bestScore = Infinity;
    if (ck.metadata.history !== undefined) {
      history.push(
        ...(JSON.parse(ck.metadata.history) as Record<string, number | null>[]).map(parseEpochLog),
      );
    } else {
      // A checkpoint of an older version: the log's first `epoch` lines.
      try {
        for (const line of (await ck.olderLog!()).split("\n")) {
          if (line.trim()) history.push(parseEpochLog(JSON.parse(line)));
        }
      } catch { /* no log yet */ }
    }
    history.splice(state.epoch);
    // The log as it was when the checkpoint was written (lines appended after it are redone).
    await store.writeLog(history, { resumed: true });
  } else {
    model = adapter.init();
    await store.writeLog([], { resumed: false });
  }
  const trainer = new Trainer(engine, model, cfg, { checkpoint: o.checkpoint });
  if (optState) trainer.opt.loadStateDict(optState);

  const nbr = neighbours(train);
  const N = train.names.length, nT = train.targetGenes.length, nA = train.auxGenes.length;
  if (N < 2) {
    throw new Error(`Cannot train on ${N} spot(s): batch normalisation needs at least 2 patches a batch`);
  }
  // A last batch of one spot would fail batch normalisation (one value per channel, as in PyTorch): it is
  // folded into the batch before it.
  const steps = N % o.batchSize === 1 && N > o.batchSize
    ? Math.floor(N / o.batchSize)
    : Math.ceil(N / o.batchSize);
  const interrupted = o.interrupt ?? (() => false);

  const save = async () => {
    const tensors = new Map<string, TensorEntry>();
    const f32 = (d: Float32Array) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    for (const [k, t] of await adapter.stateDict(model)) {
      tensors.set(k, { dtype: "F32", shape: t.shape, bytes: f32(t.data) });
    }
    for (const [k, t] of await trainer.opt.stateDict()) {
      tensors.set(`optim/${k}`, { dtype: "F32", shape: t.shape, bytes: f32(t.data) });
    }
    await store.saveCheckpoint({
      tensors,
      metadata: { run: runKey, progress: JSON.stringify(state), history: JSON.stringify(history) },
    });
  };

  try {
    for (; state.epoch < o.epochs; state.epoch++, state.step = 0) {
      const lr = trainer.setEpoch(state.epoch);
      const shuffle = rng(mix(o.seed, state.epoch));
      const perm = [...Array(N).keys()];
      for (let i = N - 1; i > 0; i--) {
        const j = Math.floor(shuffle() * (i + 1));
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      o.onEpochStart?.({ epoch: state.epoch, epochs: o.epochs, steps, step: state.step });
      const te = performance.now();
      // Sums of this epoch's steps so far: from the checkpoint when resuming mid-epoch.
      const sums = state.step > 0 && state.sums ? { ...state.sums } : zeroSums();
      const before = sums.seconds;
      state.sums = sums;
      for (; state.step < steps; state.step++) {
        const aug = rng(mix(o.seed, state.epoch, state.step, 7));
        const centre = perm.slice(
          state.step * o.batchSize,
          state.step === steps - 1 ? N : (state.step + 1) * o.batchSize,
        );
        const nbrIdx: number[] = [];
        const nbrOf: number[][] = centre.map((i) => {
          if (cfg.spatWeight <= 0) return [];
          const same = nbr[i].filter((j) => train.tumor[i] < 0 || train.tumor[j] === train.tumor[i]);
          return same.map((j) => (nbrIdx.push(j), nbrIdx.length - 1));
        });
        const all = [...centre, ...nbrIdx];
        const ks = all.map(() => Math.floor(aug() * 8));
        const x = assembleBatch(engine, all.map((i) => train.patches[i]), {
          size: o.imageSize,
          ks,
          mean: o.mean,
          std: o.std,
        });
        const target = engine.tensor(rows(train.target, nT, centre), [centre.length, nT]);
        const aux = engine.tensor(rows(train.aux, nA, centre), [centre.length, nA]);
        const l = await trainer.step({
          x,
          b: centre.length,
          target,
          aux,
          tumor: Int8Array.from(centre, (i) => train.tumor[i]),
          nbr: cfg.spatWeight > 0 ? nbrOf : undefined,
        });
        for (const t of [x, target, aux]) t.dispose();
        if (!Number.isFinite(l.total)) {
          throw new Error(
            `The loss became ${l.total} at epoch ${state.epoch + 1}, step ${state.step + 1} ` +
              `(target ${l.target}, aux ${l.aux}, tumour ${l.tumor}, spat ${l.spat}); ` +
              `run with HE2GENE_DEBUG_NAN=1 to name the op that produced it`,
          );
        }
        for (const k of ["total", "target", "aux", "tumor", "spat"] as const) sums[k] += l[k];
        sums.done++;
        sums.seconds = before + (performance.now() - te) / 1000;
        o.onStep?.({ epoch: state.epoch, step: state.step + 1, steps, loss: l.total });
        if (interrupted()) {
          state.step++;
          await save();
          throw new TrainingInterrupted(`at epoch ${state.epoch + 1}, step ${state.step} of ${steps}`);
        }
      }
      const p = await predictTable(model, val, {
        batchSize: o.batchSize,
        imageSize: o.imageSize,
        mean: o.mean,
        std: o.std,
      });
      const s = scoreTable(val, p);
      const done = sums.done;
      const log: EpochLog = {
        epoch: state.epoch + 1,
        lr,
        trainLoss: sums.total / Math.max(done, 1),
        trainTarget: sums.target / Math.max(done, 1),
        trainAux: sums.aux / Math.max(done, 1),
        trainTumor: sums.tumor / Math.max(done, 1),
        trainSpat: sums.spat / Math.max(done, 1),
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
      if (s.mse < state.bestScore) {
        state.bestScore = s.mse;
        state.bestEpoch = state.epoch + 1;
        state.bad = 0;
        await store.saveBest(
          await adapter.checkpoint(model, {
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
      // The checkpoint first, then the log line: a failed checkpoint write leaves the line unwritten, and
      // a resume rewrites the log from the checkpoint's history anyway.
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
        // Interrupted during the validation: the checkpoint of the finished epoch is saved already.
        throw new TrainingInterrupted(`after epoch ${state.epoch + 1}`);
      }
    }
  } finally {
    trainer.dispose();
  }
  // Return the best model.
  model.dispose();
  return {
    model: adapter.fromStateDict(await store.loadBest(), "best.safetensors", { trainable: false }),
    history,
    best: { epoch: state.bestEpoch, valMse: state.bestScore },
  };
}
