/**
 * Transformer ops as compositions of existing differentiable ops (elementwise, reduce, matmul), so each is
 * differentiable through their gradient rules: LayerNorm over the last axis, GELU (erf), SiLU, softmax over
 * the last axis, and scaled dot-product attention. No fused kernels yet: attention materialises the
 * (N × N) scores per head.
 *
 * @module
 */
import type { Tensor } from "../engine/tensor.ts";
import { abs, add, div, exp, maximum, mul, sigmoid, sqrt, sub } from "./elementwise.ts";
import { max, mean, sum } from "./reduce.ts";
import { matmul } from "./matmul.ts";

/** `nn.LayerNorm` over the last axis (biased variance, as PyTorch): (x − μ) / √(σ² + eps) · weight + bias. */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-6): Tensor {
  const c = sub(x, mean(x, { axes: -1, keepDims: true }));
  const v = mean(mul(c, c), { axes: -1, keepDims: true });
  return add(mul(div(c, sqrt(add(v, eps))), weight), bias);
}

/**
 * erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5 × 10⁻⁷): sign(x) · (1 − p(t) · e^(−x²)),
 * t = 1 / (1 + 0.3275911 |x|).
 */
function erf(x: Tensor): Tensor {
  const ax = abs(x);
  const d = add(mul(ax, 0.3275911), 1);
  const t = div(add(mul(ax, 0), 1), d); // 1 / d (the binary ops take a tensor first)
  const p = mul(
    t,
    add(
      mul(t, add(mul(t, add(mul(t, add(mul(t, 1.061405429), -1.453152027)), 1.421413741)), -0.284496736)),
      0.254829592,
    ),
  );
  const f = add(mul(mul(p, exp(mul(mul(ax, ax), -1))), -1), 1);
  return mul(div(x, maximum(ax, 1e-30)), f); // sign(x) · f; f(0) = 0
}

/** `nn.GELU()` (the erf form): x · ½ (1 + erf(x / √2)). */
export const gelu = (x: Tensor): Tensor => mul(mul(x, 0.5), add(erf(mul(x, Math.SQRT1_2)), 1));

/** `nn.SiLU()`: x · σ(x). */
export const silu = (x: Tensor): Tensor => mul(x, sigmoid(x));

/** Softmax over the last axis, the row maximum subtracted first. */
export function softmax(x: Tensor): Tensor {
  const e = exp(sub(x, max(x, { axes: -1, keepDims: true })));
  return div(e, sum(e, { axes: -1, keepDims: true }));
}

/** softmax(Q·Kᵀ · scale) · V for Q, K, V of shape [B, H, N, d] → [B, H, N, d]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, scale: number): Tensor {
  return matmul(softmax(mul(matmul(q, k, { transposeB: true }), scale)), v);
}
