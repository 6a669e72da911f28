/**
 * The differentiable 2-D convolution: `y = relu?(conv(x, w, stride, padding) + bias + residual)` on the
 * tape, with its gradient rule. The kernels (forward, input and weight gradients, each with its
 * strategies) are in kernels/conv2d/.
 *
 * Gradients: every backward output is a new tensor (overwrite); the tape sums (`+=`) the gradients of
 * tensors used twice. The fused epilogue is differentiable too (the ReLU mask is taken from the saved
 * output; the residual's gradient is the masked `dy`), so ResNet blocks can train with it as well as run
 * in no-grad inference.
 *
 * @module
 */
import type { Tensor } from "../engine/tensor.ts";
import { defineOp, needsGrad } from "../engine/autograd.ts";
import { binary } from "../kernels/elementwise.ts";
import {
  conv2dBackwardBias,
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dForward,
  type Conv2dOptions,
} from "../kernels/conv2d/mod.ts";

interface OpOptions {
  stride: number;
  padding: number;
  relu: boolean;
}
interface Saved {
  /** The output, kept for the ReLU mask (only with `relu`). */
  y: Tensor | null;
}

// Inputs: x, w, bias, residual. x and w themselves are what backward needs (the tape keeps inputs).
const conv2dOp = defineOp<[Tensor, Tensor, Tensor | null, Tensor | null], OpOptions, Saved>({
  name: "conv2d",
  forward: ([x, w, bias, residual], o) => {
    const y = conv2dForward(x, w, { stride: o.stride, padding: o.padding, bias, residual, relu: o.relu });
    return { output: y, saved: { y: o.relu ? y : null } };
  },
  backward: (gy, saved, [x, w, bias, residual], o) =>
    gy.engine.scope(() => {
      const g = saved.y ? binary("relu_grad", gy, saved.y) : gy;
      const geo = { stride: o.stride, padding: o.padding };
      return [
        needsGrad(x) ? conv2dBackwardInput(g, w, x.shape, geo) : null,
        needsGrad(w) ? conv2dBackwardWeight(x, g, w.shape, geo) : null,
        bias && needsGrad(bias) ? conv2dBackwardBias(g) : null,
        residual && needsGrad(residual) ? g.reshape(g.shape) : null,
      ];
    }),
});

/**
 * 2-D convolution (NCHW), differentiable in x, w, bias and residual, with PyTorch semantics:
 * `y = relu?(conv(x, w, stride, padding) + bias + residual)`.
 *
 * @example
 * ```ts
 * const y = conv2d(x, w, { stride: 1, padding: 1, bias: b });          // x: [N,64,56,56], w: [64,64,3,3]
 * const out = conv2d(h, w3, { residual: shortcut, relu: true });       // fused ResNet block tail
 * ```
 */
export function conv2d(x: Tensor, w: Tensor, options: Conv2dOptions = {}): Tensor {
  return conv2dOp([x, w, options.bias ?? null, options.residual ?? null], {
    stride: options.stride ?? 1,
    padding: options.padding ?? 0,
    relu: !!options.relu,
  });
}
