/**
 * Differentiable batch normalisation (`torch.nn.functional.batch_norm` for NCHW inputs): the gradient rule
 * over the launchers of kernels/batchnorm.ts. Forward saves the per-channel mean and rstd; backward needs
 * nothing else.
 *
 * @module
 */
import { defineOp, isRecomputing, isRecording, needsGrad } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import { batchNorm2dBackward, batchNorm2dForward, type BatchNorm2dOptions } from "../kernels/batchnorm.ts";

type BnOptions = Omit<BatchNorm2dOptions, "weight" | "bias">;

const batchNormOp = defineOp<[Tensor, Tensor, Tensor], BnOptions, { mean: Tensor; rstd: Tensor }>({
  name: "batchNorm2d",
  forward: ([x, weight, bias], o) => {
    const { y, mean, rstd } = batchNorm2dForward(x, { ...o, weight, bias });
    // The tape keeps its own references to what it saves; nothing to keep when nothing is recorded.
    if (!(isRecording() && [x, weight, bias].some(needsGrad))) {
      mean.dispose();
      rstd.dispose();
    }
    return { output: y, saved: { mean, rstd } };
  },
  backward: (gy, { mean, rstd }, [x, weight], o) => {
    const { dx, dweight, dbias } = batchNorm2dBackward(gy, x, {
      weight,
      mean,
      rstd,
      training: o.training ?? false,
    });
    return [dx, dweight, dbias];
  },
});

/**
 * `torch.nn.functional.batch_norm` for (N, C, H, W) inputs; differentiable in `x`, `weight` and `bias`.
 * In training mode the batch statistics normalise and the running statistics (when given) are updated in
 * place with `momentum`, using the unbiased variance; a channel with a single value throws a `RangeError`
 * as PyTorch does. The saved statistics belong to the current scope (and the tape keeps its own copy).
 *
 * @example
 * ```ts
 * const state = { numBatchesTracked: 0 };
 * const y = batchNorm2d(x, { weight, bias, runningMean, runningVar, training: true, state });
 * const z = batchNorm2d(x, { weight, bias, runningMean, runningVar }); // eval mode
 * ```
 */
export function batchNorm2d(x: Tensor, options: BatchNorm2dOptions): Tensor {
  const { weight, bias, ...rest } = options;
  if (isRecomputing()) {
    // A checkpointed segment run again for backward: the first forward already updated the running
    // statistics; the batch statistics are recomputed identically.
    return batchNormOp([x, weight, bias], {
      ...rest,
      runningMean: undefined,
      runningVar: undefined,
      state: undefined,
    });
  }
  return batchNormOp([x, weight, bias], rest);
}
