/**
 * The training loop (pipeline/train.ts) with its files: `checkpoint.safetensors` (model, Adam state,
 * epoch/step, best score, the running loss sums of the epoch in progress, and every finished epoch's log
 * line) written atomically after every epoch and on Ctrl-C, `best.safetensors` for the best validation
 * score, and the JSON-lines log `log.jsonl`, all in `out`. `resume` continues a killed run exactly from its
 * checkpoint, and `log.jsonl` is rewritten from the checkpoint's history, so it ends up as an uninterrupted
 * run's (apart from the `seconds` of the epochs) whatever was appended after the checkpoint.
 *
 * @module
 */
import { join } from "node:path";
import type { Engine } from "../engine/engine.ts";
import type { HE2Gene, HE2GeneConfig, HostTensor } from "../model/mod.ts";
import type { TrainConfig } from "../model/train.ts";
import { readSafetensors, toFloat32, writeSafetensors } from "../weights/mod.ts";
import { encodeNpz, writeAtomic, writeFilesAtomic } from "../slide/npz.ts";
import { meanExpressionBaseline } from "../model/mod.ts";
import { truthNpz } from "./truth.ts";
import {
  type EpochLog,
  neighbours,
  predictTable,
  scoreTable,
  type SpotTable,
  TrainingInterrupted,
  trainSpots,
  type TrainStore,
} from "../pipeline/train.ts";
import { Interrupted } from "./errors.ts";
import { Progress } from "./progress.ts";

export { type EpochLog, neighbours, predictTable, scoreTable, type SpotTable };

/** Options of {@linkcode trainModel}. */
export interface TrainOptions {
  config: HE2GeneConfig;
  train: TrainConfig;
  batchSize: number;
  epochs: number;
  patience: number;
  imageSize: number;
  seed: number;
  out: string;
  resume?: boolean;
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
  /** Called after each epoch's validation and checkpoint, with its log line (the demo's ETA). */
  onEpoch?: (log: EpochLog) => void;
  /**
   * Polled after every step and after every epoch but the last: true saves a checkpoint (resumable
   * mid-epoch; at an epoch's end it is saved already) and throws {@linkcode Interrupted}. Without it,
   * Ctrl-C (SIGINT) does the same.
   */
  interrupt?: () => boolean;
  quiet?: boolean;
  /** Activation checkpointing of the backbone (less memory, a recomputed forward; the same numbers). */
  checkpoint?: boolean;
  /** Normalisation constants (default HE2Gene's). */
  mean?: [number, number, number];
  std?: [number, number, number];
}

/** `out`'s files as a {@linkcode TrainStore}. */
export function fileStore(out: string): TrainStore {
  const ckptPath = join(out, "checkpoint.safetensors");
  const bestPath = join(out, "best.safetensors");
  const logPath = join(out, "log.jsonl");
  return {
    saveCheckpoint: (ck) => writeSafetensors(ckptPath, ck.tensors, { metadata: ck.metadata }),
    saveBest: (ck) => writeSafetensors(bestPath, ck.tensors, { metadata: ck.metadata }),
    loadBest: async () => {
      const best = await readSafetensors(bestPath);
      const sd = new Map<string, HostTensor>();
      for (const [k, t] of best.tensors) sd.set(k, { shape: t.shape, data: toFloat32(t).slice() });
      return sd;
    },
    writeLog: (history, o) =>
      o.resumed
        ? writeAtomic(logPath, history.map((h) => JSON.stringify(h) + "\n").join(""))
        : Deno.writeTextFile(logPath, ""),
    appendLog: (log) => Deno.writeTextFile(logPath, JSON.stringify(log) + "\n", { append: true }),
  };
}

/**
 * A run's saved state for `--resume`: its checkpoint (`out/checkpoint.safetensors`), or undefined without
 * `resume`; an Error naming `out` when it cannot be read.
 */
export async function resumeFrom(out: string, resume: boolean) {
  if (!resume) return undefined;
  const file = join(out, "checkpoint.safetensors");
  const ck = await readSafetensors(file).catch((e) => {
    throw new Error(`Cannot resume from ${out}: ${(e as Error).message}`);
  });
  return { ...ck, from: out, file };
}

/**
 * Run a training loop; its interrupt (Ctrl-C) becomes an {@linkcode Interrupted} naming the checkpoint to
 * continue from with `--resume`, after closing the open progress bar.
 */
export async function untilInterrupted<T>(
  out: string,
  progress: { done: () => void },
  loop: () => Promise<T>,
): Promise<T> {
  try {
    return await loop();
  } catch (e) {
    if (!(e instanceof TrainingInterrupted)) throw e;
    progress.done();
    const ckptPath = join(out, "checkpoint.safetensors");
    throw new Interrupted(`${e.message}; the checkpoint is saved in ${ckptPath}: continue with --resume`);
  }
}

/**
 * Train (or continue training) a model, with its files in `o.out` (see the module doc). Returns the model
 * with the best validation weights loaded.
 */
export async function trainModel(
  engine: Engine,
  train: SpotTable,
  val: SpotTable,
  o: TrainOptions,
): Promise<{ model: HE2Gene; history: EpochLog[]; best: { epoch: number; valMse: number } }> {
  await Deno.mkdir(o.out, { recursive: true });
  const logPath = join(o.out, "log.jsonl");
  const saved = await resumeFrom(o.out, o.resume ?? false);
  const resume = saved && { ...saved, olderLog: () => Deno.readTextFile(logPath) };
  let sigint = false;
  const onSigint = () => (sigint = true);
  if (!o.interrupt) {
    try {
      Deno.addSignalListener("SIGINT", onSigint);
    } catch { /* not supported here */ }
  }
  const progress = epochProgress(o.quiet ?? false);
  try {
    return await untilInterrupted(o.out, progress, () =>
      trainSpots(engine, train, val, {
        config: o.config,
        train: o.train,
        batchSize: o.batchSize,
        epochs: o.epochs,
        patience: o.patience,
        imageSize: o.imageSize,
        seed: o.seed,
        store: fileStore(o.out),
        resume,
        init: o.init,
        initBackbone: o.initBackbone,
        biasFromMeans: o.biasFromMeans,
        checkpoint: o.checkpoint,
        mean: o.mean,
        std: o.std,
        interrupt: o.interrupt ?? (() => sigint),
        onEpochStart: progress.onEpochStart,
        onStep: progress.onStep,
        onMessage: (line) => !o.quiet && console.error(line),
        onEpoch: o.onEpoch,
      }));
  } finally {
    if (!o.interrupt) {
      try {
        Deno.removeSignalListener("SIGINT", onSigint);
      } catch { /* ignore */ }
    }
  }
}

/**
 * A progress bar per epoch for a training loop's `onEpochStart` / `onStep`; `done()` closes the open one
 * (on an interrupt).
 */
export function epochProgress(quiet: boolean): {
  onEpochStart: (p: { epoch: number; epochs: number; steps: number; step: number }) => void;
  onStep: (p: { step: number; steps: number; loss: number }) => void;
  done: () => void;
} {
  let bar: Progress | null = null;
  const done = () => {
    bar?.done();
    bar = null;
  };
  return {
    onEpochStart: (p) => {
      bar = new Progress(`epoch ${p.epoch + 1}/${p.epochs}`, p.steps, quiet, "batches");
      if (p.step >= p.steps) done(); // resumed after its last step
    },
    onStep: (p) => {
      bar?.tick(1, `loss ${p.loss.toFixed(4)}`);
      if (p.step === p.steps) done();
    },
    done,
  };
}

/** Predictions of a spot table in the npz format `he2gene evaluate` reads. */
export function predictionsNpz(
  t: SpotTable,
  p: { target: Float32Array; aux: Float32Array; tumorProb?: Float32Array },
  npz: { compress?: boolean },
): Uint8Array {
  const V = t.names.length;
  return encodeNpz({
    target: { dtype: "f4", shape: [V, t.targetGenes.length], data: p.target },
    aux: { dtype: "f4", shape: [V, t.auxGenes.length], data: p.aux },
    ...(p.tumorProb ? { tumor_prob: { dtype: "f4" as const, shape: [V], data: p.tumorProb } } : {}),
    names: { dtype: "U", shape: [V], data: t.names },
    target_genes: { dtype: "U", shape: [t.targetGenes.length], data: t.targetGenes },
    aux_genes: { dtype: "U", shape: [t.auxGenes.length], data: t.auxGenes },
  }, { compress: npz.compress });
}

type Predicted = { target: Float32Array; aux: Float32Array; tumorProb?: Float32Array };

/**
 * The best model's files for `he2gene evaluate`: its validation predictions and their truth; with held-out
 * sections, their predictions, truth and the mean-expression baseline's predictions (each gene's mean over
 * the training spots; no tumour score), written together.
 */
export async function writeRunPredictions(
  out: string,
  o: {
    train: SpotTable;
    val: SpotTable;
    valPredictions: Predicted;
    test?: SpotTable | null;
    testPredictions?: Predicted;
    compress?: boolean;
  },
): Promise<void> {
  const npz = { compress: o.compress };
  await writeAtomic(join(out, "val_predictions.npz"), predictionsNpz(o.val, o.valPredictions, npz));
  await writeAtomic(join(out, "val_truth.npz"), truthNpz(o.val, npz));
  if (!o.test || !o.testPredictions) return;
  const N = o.train.names.length, V = o.test.names.length;
  const baseline = {
    target: meanExpressionBaseline(o.train.target, N, o.train.targetGenes.length).predict(V),
    aux: meanExpressionBaseline(o.train.aux, N, o.train.auxGenes.length).predict(V),
  };
  await writeFilesAtomic(out, [
    ["test_predictions.npz", predictionsNpz(o.test, o.testPredictions, npz)],
    ["test_truth.npz", truthNpz(o.test, npz)],
    ["test_baseline.npz", predictionsNpz(o.test, baseline, npz)],
  ]);
}
