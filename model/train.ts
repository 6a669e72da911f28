/**
 * One training step of HE2Gene-Base / HE2Gene-Spat, and evaluation.
 *
 *   Base: L = MSE(target) + aux·MSE(aux) + tmr·BCE(tumour)
 *   Spat: L_base + spat·MSE(ŷ_i, mean_{j ∈ N(i)} ŷ_j) over spots i with at least one neighbour j that exists
 *         and shares i's tumour label (HE2Gene's spatial-aware constraint); neighbour patches go through the
 *         backbone together with the centre batch (batch-norm statistics over both, as the original).
 *
 * Rows are selected and neighbours averaged with small host-built matrices (`S · Ŷ`), so every step is a
 * chain of differentiable ops and the whole step stays on the GPU. Spots without a tumour label are left out
 * of the BCE term. Adam (L2 weight decay) with global gradient-norm clipping.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { Tensor } from "../engine/tensor.ts";
import { backward, clearGraph, noGrad } from "../engine/autograd.ts";
import { add, mul } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { bceLoss, maskedMseLoss, mseLoss } from "../ops/loss.ts";
import { Adam, StepLR } from "../kernels/optim.ts";
import type { HE2GeneOutput } from "./he2gene.ts";

/** Hyper-parameters (defaults: the original's). */
export interface TrainConfig {
  lr: number;
  weightDecay: number;
  stepSize: number;
  gamma: number;
  clipNorm: number;
  auxWeight: number;
  tmrWeight: number;
  /** 0 trains HE2Gene-Base; > 0 adds the spatial constraint (HE2Gene-Spat). */
  spatWeight: number;
}

/** The original's hyper-parameters. */
export const DEFAULT_TRAIN: TrainConfig = {
  lr: 1e-5,
  weightDecay: 1e-4,
  stepSize: 10,
  gamma: 0.5,
  clipNorm: 1,
  auxWeight: 20,
  tmrWeight: 1,
  spatWeight: 0,
};

/** One batch, on the GPU except for the small host-side index data. */
export interface TrainBatch {
  /** (B + M, 3, S, S): B centre patches, then M neighbour patches. */
  x: Tensor;
  /** Centre spots. */
  b: number;
  /** (B, G) and (B, A) truths. */
  target: Tensor;
  aux: Tensor;
  /** Tumour label per centre spot: 1, 0, or −1 when unknown (left out of the loss). */
  tumor: Int8Array;
  /** For Spat: neighbours of centre i are rows `nbr[i]` of the M neighbour patches (0-based). */
  nbr?: number[][];
}

/** Loss terms of a step, read back once. */
export interface StepLosses {
  total: number;
  target: number;
  aux: number;
  tumor: number;
  spat: number;
}

/**
 * What a `Trainer` trains: `HE2Gene`, or an encoder whose last blocks are fine-tuned under HE2Gene's heads
 * (`FineTunedEncoder`, model/finetune.ts).
 *
 * @example
 * ```ts
 * const trainer = new Trainer(engine, model satisfies TrainableModel, DEFAULT_TRAIN);
 * ```
 */
export interface TrainableModel {
  /** Parameters by state-dict key; Adam trains those with `requiresGrad`. */
  readonly params: Map<string, Tensor>;
  /**
   * x: (N, 3, H, W) normalised → the heads' outputs and the (N, D) features, on the tape. `training`: batch
   * statistics for the batch norms that train; `checkpoint`: activation checkpointing where the model has it.
   */
  forward(x: Tensor, options: { training: boolean; checkpoint?: boolean }): HE2GeneOutput;
}

/** Trains a model in place. */
export class Trainer<M extends TrainableModel = TrainableModel> {
  readonly opt: Adam;
  readonly schedule: StepLR;

  /**
   * `options.checkpoint`: checkpoint the backbone's stem and residual blocks (`resnetForward`): the same
   * numbers for a fraction of the activation memory, at the price of recomputing each block in backward.
   */
  constructor(
    readonly engine: Engine,
    readonly model: M,
    readonly cfg: TrainConfig,
    readonly options: { checkpoint?: boolean } = {},
  ) {
    const params = new Map([...model.params].filter(([, t]) => t.requiresGrad));
    this.opt = new Adam(params, { lr: cfg.lr, weightDecay: cfg.weightDecay });
    this.schedule = new StepLR(this.opt, { stepSize: cfg.stepSize, gamma: cfg.gamma });
  }

  /** Forward, backward, clip, Adam. Returns the loss terms (one readback). */
  async step(batch: TrainBatch): Promise<StepLosses> {
    const e = this.engine;
    const { b } = batch;
    const n = batch.x.shape[0];
    const cfg = this.cfg;
    const parts = e.scope(() => {
      const out = this.model.forward(batch.x, { training: true, checkpoint: this.options.checkpoint });
      // Centre rows of the outputs: Sc (B, B+M) one-hot.
      const sc = new Float32Array(b * n);
      for (let i = 0; i < b; i++) sc[i * n + i] = 1;
      const Sc = e.tensor(sc, [b, n]);
      const pick = (t: Tensor) => (n === b ? t : matmul(Sc, t));
      const target = pick(out.target), aux = pick(out.aux), prob = pick(out.tumorProb);
      const lt = mseLoss(target, batch.target);
      const la = mseLoss(aux, batch.aux);
      let total = add(lt, mul(la, cfg.auxWeight));
      // Tumour: only labelled spots.
      const labelled = [...batch.tumor].map((v, i) => [v, i]).filter(([v]) => v >= 0);
      let lm: Tensor | null = null;
      if (labelled.length > 0 && cfg.tmrWeight > 0) {
        const sl = new Float32Array(labelled.length * b);
        labelled.forEach(([, i], r) => (sl[r * b + i] = 1));
        const sel = labelled.length === b ? prob : matmul(e.tensor(sl, [labelled.length, b]), prob);
        lm = bceLoss(sel, e.tensor(Float32Array.from(labelled, ([v]) => v), [labelled.length, 1]));
        total = add(total, mul(lm, cfg.tmrWeight));
      }
      let ls: Tensor | null = null;
      if (cfg.spatWeight > 0 && batch.nbr) {
        // W (B, B+M): row i averages the rows of i's neighbours; mask: spots that have any.
        const w = new Float32Array(b * n);
        const mask = new Float32Array(b);
        batch.nbr.forEach((js, i) => {
          if (js.length === 0) return;
          mask[i] = 1;
          for (const j of js) w[i * n + b + j] = 1 / js.length;
        });
        const nbrMean = matmul(e.tensor(w, [b, n]), out.target);
        ls = maskedMseLoss(target, nbrMean, e.tensor(mask, [b]));
        total = add(total, mul(ls, cfg.spatWeight));
      }
      out.features.dispose();
      return { total, lt, la, lm, ls };
    });
    await backward(parts.total);
    this.opt.step({ clipNorm: cfg.clipNorm })?.dispose();
    this.opt.zeroGrad();
    // One readback for the five scalars.
    const all = e.zeros([5]);
    [parts.total, parts.lt, parts.la, parts.lm, parts.ls].forEach((t, i) =>
      t && e.copy(t, all, { dstOffset: i })
    );
    const v = await all.toArray();
    all.dispose();
    for (const t of Object.values(parts)) t?.dispose();
    return { total: v[0], target: v[1], aux: v[2], tumor: v[3], spat: v[4] };
  }

  /** Set the learning rate for `epoch` (StepLR). */
  setEpoch(epoch: number): number {
    return this.schedule.setEpoch(epoch);
  }

  /** Release the optimizer state. */
  dispose(): void {
    this.opt.dispose();
    clearGraph();
  }
}

/**
 * Eval-mode predictions (running batch-norm statistics, no autograd) for a batch of normalised patches.
 * Returns host arrays.
 */
export async function predictEval(
  model: TrainableModel & { readonly engine: Engine },
  x: Tensor,
): Promise<{ target: Float32Array; aux: Float32Array; tumorProb: Float32Array }> {
  const e = model.engine;
  const out = noGrad(() => e.scope(() => model.forward(x, { training: false })));
  const [target, aux, tumorProb] = await Promise.all([
    out.target.toArray(),
    out.aux.toArray(),
    out.tumorProb.toArray(),
  ]);
  for (const t of Object.values(out)) t.dispose();
  return { target, aux, tumorProb };
}
