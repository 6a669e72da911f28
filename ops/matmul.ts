/**
 * Differentiable matrix multiply: `matmul` (batched, either operand transposed, fused bias and activation)
 * and `linear` (PyTorch's Linear). Forward is `matmulForward` of `kernels/matmul.ts`; backward composes
 * matmuls, reductions and elementwise kernels into fresh tensors (nothing accumulates in place).
 *
 * @module
 */
import { defineOp } from "../engine/autograd.ts";
import { shapeSize, type Tensor } from "../engine/tensor.ts";
import { binary } from "../kernels/elementwise.ts";
import { type Activation, matmulForward, type MatmulOptions, transpose } from "../kernels/matmul.ts";
import { reduce } from "../kernels/reduce.ts";

interface MmOpts {
  transposeA: boolean;
  transposeB: boolean;
  activation: Activation;
}

const matmulOp = defineOp<[Tensor, Tensor, Tensor | null], MmOpts, Tensor | null>({
  name: "matmul",
  forward: ([a, b, bias], o) => {
    const y = matmulForward(a, b, { ...o, bias: bias ?? undefined });
    return { output: y, saved: o.activation === "none" ? null : y };
  },
  // C = op(A)·op(B):  dA = dC·op(B)ᵀ (or its transpose when A is stored transposed),
  //                   dB = op(A)ᵀ·dC (or its transpose), dbias = Σ_rows dC.
  backward: (gy, y, [a, b, bias], o) => {
    const e = gy.engine;
    return e.scope(() => {
      const g = o.activation === "relu"
        ? binary("relu_grad", gy, y!)
        : o.activation === "sigmoid"
        ? binary("sigmoid_grad", gy, y!)
        : gy;
      const tA = o.transposeA, tB = o.transposeB;
      const aB = a.rank > 2, bB = b.rank > 2;
      // dA
      let da = tA
        ? matmulForward(b, g, { transposeA: tB, transposeB: true }) // (K, M) = op(B)·dCᵀ
        : matmulForward(g, b, { transposeB: !tB }); // (M, K) = dC·op(B)ᵀ
      if (!aB && bB) da = reduce("sum", da, { axes: [...Array(da.rank - 2).keys()] }); // A was broadcast
      // dB
      let db: Tensor;
      if (bB || !aB) {
        db = tB
          ? matmulForward(g, a, { transposeA: true, transposeB: tA }) // (N, K) = dCᵀ·op(A)
          : matmulForward(a, g, { transposeA: !tA }); // (K, N) = op(A)ᵀ·dC
      } else {
        // B was broadcast over A's batch: fold the batch into the rows of A and dC.
        const rows = shapeSize(a.shape.slice(0, -2));
        const a2 = tA ? transpose(a) : a;
        const af = a2.reshape([rows * a2.shape[a2.rank - 2], a2.shape[a2.rank - 1]]);
        const gf = g.reshape([rows * g.shape[g.rank - 2], g.shape[g.rank - 1]]);
        db = tB ? matmulForward(gf, af, { transposeA: true }) : matmulForward(af, gf, { transposeA: true });
      }
      const dbias = bias ? reduce("sum", g, { axes: [...Array(g.rank - 1).keys()] }) : null;
      return [da, db, dbias];
    });
  },
});

/**
 * Differentiable `act(op(A)·op(B) + bias)`, batched: A (…, M, K), B (…, K, N) (either transposed),
 * batch dimensions equal or one operand 2-D.
 *
 * @example
 * ```ts
 * const y = matmul(x, w, { transposeB: true, bias: b }); // a Linear layer: x (B, in), w (out, in)
 * ```
 */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  return matmulOp([a, b, options.bias ?? null], {
    transposeA: !!options.transposeA,
    transposeB: !!options.transposeB,
    activation: options.activation ?? "none",
  });
}

/**
 * A Linear layer as PyTorch's: `x · Wᵀ + b`, W of shape [out, in].
 *
 * @example
 * ```ts
 * const logits = linear(features, weight, bias); // (B, 2048) → (B, 250)
 * ```
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  return matmul(x, weight, { transposeB: true, bias });
}
