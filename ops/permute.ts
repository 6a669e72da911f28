/**
 * Differentiable axis permutations (the gradient of a swap is the same swap).
 *
 * @module
 */
import { defineOp } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import { swapAxes12Forward } from "../kernels/permute.ts";

const swapOp = defineOp<[Tensor], void, void>({
  name: "swapAxes12",
  forward: ([x]) => ({ output: swapAxes12Forward(x), saved: undefined }),
  backward: (gy) => [swapAxes12Forward(gy)],
});

/**
 * [A, B, C, D] → [A, C, B, D] (`x.transpose(1, 2)` in PyTorch, materialised); differentiable.
 *
 * @example
 * ```ts
 * const q = swapAxes12(qTokens.reshape([b, n, heads, d])); // [b, heads, n, d]
 * ```
 */
export function swapAxes12(x: Tensor): Tensor {
  return swapOp([x]);
}
