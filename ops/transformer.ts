/**
 * Differentiable transformer ops: `layerNorm` (last axis), `gelu` (exact erf), `silu`, `softmax` (last
 * axis) and fused `attention`; the gradient rules over the launchers of kernels/layernorm.ts,
 * kernels/activation.ts, kernels/softmax.ts and kernels/attention.ts.
 *
 * @module
 */
import { defineOp, isRecording, needsGrad } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import { activationBackward, activationForward } from "../kernels/activation.ts";
import { attentionBackward, attentionForward } from "../kernels/attention.ts";
import { layerNormBackward, layerNormForward } from "../kernels/layernorm.ts";
import { softmaxBackward, softmaxForward } from "../kernels/softmax.ts";
import { mul } from "./elementwise.ts";
import { matmul } from "./matmul.ts";

const layerNormOp = defineOp<[Tensor, Tensor, Tensor], { eps: number }, { mean: Tensor; rstd: Tensor }>({
  name: "layerNorm",
  forward: ([x, weight, bias], o) => {
    const { y, mean, rstd } = layerNormForward(x, weight, bias, o.eps);
    // The tape keeps its own references to what it saves; nothing to keep when nothing is recorded.
    if (!(isRecording() && [x, weight, bias].some(needsGrad))) {
      mean.dispose();
      rstd.dispose();
    }
    return { output: y, saved: { mean, rstd } };
  },
  backward: (gy, { mean, rstd }, [x, weight]) => {
    const { dx, dweight, dbias } = layerNormBackward(gy, x, { weight, mean, rstd });
    return [dx, dweight, dbias];
  },
});

/**
 * `torch.nn.functional.layer_norm(x, [C], weight, bias, eps)` over the last axis (C); differentiable in
 * `x`, `weight` and `bias`. The default eps is ViT's 1e-6 (PyTorch's own default is 1e-5).
 *
 * @example
 * ```ts
 * const y = layerNorm(x, weight, bias); // x: [B, N, C], weight, bias: [C]
 * ```
 */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-6): Tensor {
  return layerNormOp([x, weight, bias], { eps });
}

const activationOp = defineOp<[Tensor], { op: "gelu" | "silu" }, void>({
  name: "activation",
  forward: ([x], { op }) => ({ output: activationForward(op, x), saved: undefined }),
  backward: (gy, _saved, [x], { op }) => [activationBackward(op, gy, x)],
});

/**
 * `torch.nn.functional.gelu(x)` with the exact erf (PyTorch's default, `approximate="none"`).
 *
 * @example
 * ```ts
 * const h = gelu(matmul(x, w1)); // the ViT MLP
 * ```
 */
export function gelu(x: Tensor): Tensor {
  return activationOp([x], { op: "gelu" });
}

/**
 * `torch.nn.functional.silu(x)`: x·σ(x).
 *
 * @example
 * ```ts
 * const y = silu(x);
 * ```
 */
export function silu(x: Tensor): Tensor {
  return activationOp([x], { op: "silu" });
}

const softmaxOp = defineOp<[Tensor], void, Tensor>({
  name: "softmax",
  // Backward reads the output; the tape keeps it alive as the node's output.
  forward: ([x]) => {
    const y = softmaxForward(x);
    return { output: y, saved: y };
  },
  backward: (gy, y) => [softmaxBackward(gy, y)],
});

/**
 * `torch.softmax(x, -1)`: softmax over the last axis, max-subtracted.
 *
 * @example
 * ```ts
 * const p = softmax(scores); // [B, H, N, N], rows sum to 1
 * ```
 */
export function softmax(x: Tensor): Tensor {
  return softmaxOp([x], undefined);
}

const attentionOp = defineOp<[Tensor, Tensor, Tensor], { scale: number }, { out: Tensor; lse: Tensor }>({
  name: "attention",
  forward: ([q, k, v], { scale }) => {
    const { out, lse } = attentionForward(q, k, v, scale);
    if (!(isRecording() && [q, k, v].some(needsGrad))) lse.dispose();
    return { output: out, saved: { out, lse } };
  },
  backward: (gy, { out, lse }, [q, k, v], { scale }) => {
    const { dq, dk, dv } = attentionBackward(gy, { q, k, v, out, lse }, scale);
    return [dq, dk, dv];
  },
});

/**
 * Scaled dot-product attention, softmax(Q·Kᵀ·scale)·V, fused (the N×N scores are never stored; backward
 * recomputes them from the saved row logsumexp). q, k, v: [B, H, N, d] → [B, H, N, d]; heads wider than
 * 64 (the fused kernel's limit) run unfused.
 *
 * @example
 * ```ts
 * const o = attention(q, k, v, 1 / Math.sqrt(q.shape[3]));
 * ```
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, scale: number): Tensor {
  // Heads wider than the fused kernel's 64 (ViT-H/14: 1280 / 16 = 80) go through matmul, softmax and matmul,
  // which materialises the scores but is differentiable through their rules.
  if (q.rank === 4 && q.shape[3] > 64) {
    return matmul(softmax(mul(matmul(q, k, { transposeB: true }), scale)), v);
  }
  return attentionOp([q, k, v], { scale });
}
