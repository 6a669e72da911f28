/**
 * Differentiable pooling: max pooling (`torch.nn.functional.max_pool2d`) and global average pooling
 * (`torch.nn.AdaptiveAvgPool2d((1, 1))` + flatten), as gradient rules over the launchers of
 * kernels/pool.ts.
 *
 * @module
 */
import { defineOp, isRecording, needsGrad } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  globalAvgPool2dBackward,
  globalAvgPool2dForward,
  type GlobalAvgPool2dOptions,
  maxPool2dBackward,
  maxPool2dForward,
  type MaxPool2dOptions,
} from "../kernels/pool.ts";

const maxPoolOp = defineOp<[Tensor], MaxPool2dOptions, Tensor | null>({
  name: "maxPool2d",
  forward: ([x], o) => {
    // Indices are only computed (and kept) when the op will be recorded.
    const { y, indices } = maxPool2dForward(x, o, isRecording() && needsGrad(x));
    return { output: y, saved: indices };
  },
  backward: (gy, indices, [x], o) => [maxPool2dBackward(gy, indices!, x.shape, o)],
  backwardReads: [false], // x's shape only
});

/**
 * `torch.nn.functional.max_pool2d` (dilation 1, floor mode); differentiable. The saved indices belong to
 * the current scope (the tape keeps its own reference).
 *
 * @example
 * ```ts
 * const y = maxPool2d(x, { kernelSize: 3, stride: 2, padding: 1 }); // [N, 64, 112, 112] → [N, 64, 56, 56]
 * ```
 */
export function maxPool2d(x: Tensor, options: MaxPool2dOptions): Tensor {
  return maxPoolOp([x], options);
}

const avgPoolOp = defineOp<[Tensor], GlobalAvgPool2dOptions, void>({
  name: "globalAvgPool2d",
  forward: ([x], o) => ({ output: globalAvgPool2dForward(x, o), saved: undefined }),
  backward: (gy, _s, [x]) => [globalAvgPool2dBackward(gy, x.shape)],
  backwardReads: [false], // x's shape only
});

/**
 * `torch.nn.AdaptiveAvgPool2d((1, 1))` followed by a flatten: [N, C, H, W] → [N, C] (or [N, C, 1, 1] with
 * `keepDims`); differentiable.
 *
 * @example
 * ```ts
 * const features = globalAvgPool2d(x); // [N, 2048, 7, 7] → [N, 2048]
 * ```
 */
export function globalAvgPool2d(x: Tensor, options: GlobalAvgPool2dOptions = {}): Tensor {
  return avgPoolOp([x], options);
}

/**
 * Global average pool, [N, C, H, W] → [N, C] (PyTorch's `adaptive_avg_pool2d(x, 1)` then flatten);
 * differentiable. An alias of {@linkcode globalAvgPool2d}.
 *
 * @example
 * ```ts
 * const features = globalAvgPool(x); // (N, 2048, 7, 7) → (N, 2048)
 * ```
 */
export const globalAvgPool = (x: Tensor, options: GlobalAvgPool2dOptions = {}): Tensor =>
  globalAvgPool2d(x, options);
