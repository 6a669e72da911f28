/**
 * The tolerances of every GPU-against-reference comparison, stated once: the test suite
 * (tests/helpers.ts re-exports them) and `he2gene selftest` (kernels/selftest.ts) use this one table.
 *
 * A value passes when `|got − want| ≤ atol + rtol·s`, where `s` is `|want|`, or, for products (matmul,
 * conv2d), the same product computed on absolute values (`Σ_k |a_ik||b_kj|`): float32 dot products of
 * length K err like √K·ε·Σ|a||b|, which can be far larger than the result itself when terms cancel.
 *
 * @module
 */

/** `|got − want| ≤ atol + rtol·s` elementwise. */
export interface Tolerance {
  readonly rtol: number;
  readonly atol: number;
}

/**
 * Tolerances per op family.
 *
 * @example
 * ```ts
 * const c = compareClose(got, want, TOL.matmul, scale); // scale: Σ|a||b| per element
 * if (!c.ok) console.log(`worst |err| ${c.maxError} at ${c.worstAt}`);
 * ```
 */
export const TOL = {
  /** Copies and permutations (transpose, max-pool's values and indices): bit for bit. */
  exact: { rtol: 0, atol: 0 },
  /** Float32 rounding of one op on both sides (WGSL exp/log/tanh are within a few ulp). */
  elementwise: { rtol: 2e-6, atol: 1e-6 },
  /** Sums of up to 10⁷ float32 values against a float64 reference. */
  reduce: { rtol: 1e-5, atol: 1e-5 },
  /** Float32 dot products of length K, against the scale Σ_k |a_ik||b_kj| (not |want|). */
  matmul: { rtol: 1e-5, atol: 1e-6 },
  /** Whole networks against PyTorch (float32 both sides, different summation orders): the parity bar. */
  model: { rtol: 0, atol: 1e-4 },
  /**
   * Conv outputs and gradients: float32 dot products of length K (Cin·KH·KW, Cout·KH·KW or N·OH·OW), so,
   * as for matmul, against the scale Σ|a||b| of the same product on absolute values.
   */
  conv2d: { rtol: 1e-5, atol: 1e-6 },
  /** Conv against PyTorch's float32 results (its own rounding differs from ours): same scale, looser. */
  conv2dTorch: { rtol: 5e-5, atol: 1e-5 },
  /**
   * Batch norm. Outputs are O(1) after normalisation; float32 Welford statistics of up to 25k values per
   * channel against a float64 two-pass reference. Gradients add sums of M = N·H·W float32 terms (dγ, dβ)
   * and the cancellation in dx = γ·rstd·(dy − (Σdy + x̂·Σdy·x̂)/M).
   */
  batchNorm: {
    forward: { rtol: 1e-5, atol: 2e-5 },
    stats: { rtol: 1e-5, atol: 1e-6 },
    /** 1/√(var + eps): relative only. */
    rstd: { rtol: 1e-4, atol: 0 },
    grad: { rtol: 1e-4, atol: 5e-5 },
    /** Central differences of float32 forward passes (step 1e-2). */
    fd: { rtol: 2e-2, atol: 3e-3 },
  },
  /**
   * Pooling. Max-pool forward copies values and must match exactly (indices too); its backward sums at
   * most ⌈k/s⌉² float32 values |dy| ≤ 1 (cancellation: absolute error ~⌈k/s⌉²·ε); the global average is
   * a compensated float32 sum of H·W values against float64.
   */
  pool: {
    maxForward: { rtol: 0, atol: 0 },
    maxBackward: { rtol: 1e-6, atol: 1e-6 },
    avg: { rtol: 1e-6, atol: 1e-7 },
    /** Central differences of float32 forward passes (step 1e-2). */
    fd: { rtol: 1e-2, atol: 1e-3 },
  },
  /**
   * Losses. The value: a mean of up to 5·10⁶ float32 terms (compensated per thread, tree across threads)
   * against float64; BCE terms carry WGSL's log error (≤ 2⁻²¹ absolute on [0.5, 2]).
   */
  loss: { rtol: 1e-5, atol: 1e-7 },
  /**
   * Adam against a float64 reference of torch's update.
   * - theta: parameters in [−1, 1] after a few steps; each step adds ≈ lr with a few ulp of relative error.
   * - moments: m = β1·m + (1 − β1)·g cancels: its absolute error is a few ulp of |g| ≤ 1 (≈ 1e-8), not
   *   of m; v is a sum of positive terms and is held to the relative part.
   * - norm: a sum of squares reduced as partials + one tree, against float64.
   */
  adam: {
    theta: { rtol: 1e-6, atol: 1e-7 },
    moments: { rtol: 1e-5, atol: 2e-8 },
    norm: { rtol: 1e-6, atol: 0 },
  },
  /**
   * Transformer ops (kernels/layernorm.ts, activation.ts, softmax.ts, attention.ts) against float64 CPU
   * references.
   * - layerNorm: rows of C ≤ 1024 float32 values, two-pass statistics; outputs O(|γ|) after normalisation,
   *   so an absolute part of a few ulp of O(1) plus √C·ε-sized sum error. Its gradients add the per-row
   *   sums mean(γ·dy), mean(γ·dy·x̂) (cancellation in dx) and, for dγ, dβ, sums over up to 10³ rows.
   * - activation: one erf/exp per value; WGSL's exp is a few ulp, our erf ≈ 1e-7 relative. gelu's tail below
   *   x ≈ −3 (|gelu| < 4e-3, relative error up to 2e-3 at −7, see kernels/activation.ts) is held by the atol.
   * - softmax: exp of max-subtracted values, then a float32 row sum (length N ≤ 10³) and a division.
   * - attention: dot products of length d (scores) and N (P·V), with an online softmax; values O(1), so
   *   absolute errors of √N·ε-size relative to Σ|p||v| ≤ max|v|. Backward: dP = dO·Vᵀ, dS = P ⊙ (dP − D)
   *   with the cancellation in dP − D, then sums over N of length-d terms.
   */
  transformer: {
    layerNorm: { rtol: 1e-5, atol: 1e-5 },
    layerNormGrad: { rtol: 1e-4, atol: 2e-5 },
    activation: { rtol: 2e-6, atol: 1e-6 },
    /** The WGSL erf alone: float32 minimax pieces (< 1 ulp) plus WGSL's exp (a few ulp, scaled by ≤ 0.2). */
    erf: { rtol: 3e-7, atol: 1e-30 },
    softmax: { rtol: 1e-5, atol: 1e-7 },
    attention: { rtol: 1e-5, atol: 2e-6 },
    attentionGrad: { rtol: 1e-4, atol: 2e-5 },
  },
  /** Gradients on the tape against central finite differences (float32 forward passes, step 1e-2). */
  finiteDifferences: { rtol: 2e-2, atol: 2e-3 },
  /**
   * Dense linear algebra (kernels/linalg.ts, model/ridge.ts) against float64, on seeded matrices of
   * condition ≲ 10³ (measured on llvmpipe, worst case of the tests: the value in brackets).
   * - cholesky: L of A = XᵀX/r + 0.05·I, D ≤ 300, against √A_ii, the bound of every |L_ij| of row i
   *   (Σ_j L_ij² = A_ii): a few √D·ε (2.7e-7).
   * - solve: forward and back substitution with the same float32 factor on both sides, against the largest
   *   |x| of each right-hand side (norm-wise: the error grows like D·ε·cond(L)) (5.6e-7).
   * - ridge: the weights against the largest |W| of each target's row (the error is ~cond(G + λI)·ε
   *   norm-wise), the bias against |b| + max|W_k·|·Σ|μx| (b = μy − W·μx inherits W's error) (1.1e-6).
   * - ridgeMse: the validation MSE per λ, relative (4.8e-7; a λ so small that cond(G + λI) ~ 10⁵ errs
   *   by 5e-5, which is why the tests' grids stay above it).
   */
  linalg: {
    cholesky: { rtol: 3e-6, atol: 0 },
    solve: { rtol: 5e-6, atol: 0 },
    ridge: { rtol: 1e-5, atol: 0 },
    ridgeMse: { rtol: 1e-5, atol: 0 },
  },
} as const;

/**
 * Loss gradients of `n` elements: one float32 rounding chain per element; the absolute part covers BCE's
 * target gradient `log1p(−p) − log p`, which cancels near p = ½ (scaled by 1/N like every gradient).
 *
 * @example
 * ```ts
 * compareClose(gpuGrad, cpu.grad, lossGradTolerance(p.length));
 * ```
 */
export function lossGradTolerance(n: number): Tolerance {
  return { rtol: 1e-5, atol: 4e-6 / n };
}

/** What {@linkcode compareClose} found. */
export interface Comparison {
  /** Every value within tolerance (NaN matches only NaN). */
  ok: boolean;
  /** Values compared. */
  count: number;
  /** Largest |got − want| over all values (Infinity on a NaN mismatch; 0 when empty). */
  maxError: number;
  /** Largest |got − want| / (atol + rtol·s): ≤ 1 passes (Infinity where the limit is 0 and err > 0). */
  ratio: number;
  /** First index out of tolerance, −1 if none. */
  firstBad: number;
  /** Index of the worst out-of-tolerance value, −1 if none. */
  worstAt: number;
  /** Worst error among the out-of-tolerance values (0 if none; NaN after a NaN mismatch). */
  worstBad: number;
}

/**
 * Compare `got` with `want` elementwise: `|got − want| ≤ atol + rtol·|s|` with `s = scale[i]` when a
 * scale is given (matmul and conv2d: Σ|a||b| of the same product), else `want[i]`. Equal values (also
 * ±Infinity) and NaN against NaN pass. Lengths must be equal.
 *
 * @example
 * ```ts
 * const want = matmulCpu(a, [7, 33], b, [33, 5]);
 * const c = compareClose(await y.toArray(), want.data, TOL.matmul, want.scale);
 * ```
 */
export function compareClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: Tolerance,
  scale?: ArrayLike<number>,
): Comparison {
  if (got.length !== want.length) {
    throw new RangeError(`Cannot compare ${got.length} values with ${want.length}: lengths differ`);
  }
  let firstBad = -1, worstAt = -1, worstBad = 0, maxError = 0, ratio = 0;
  for (let i = 0; i < got.length; i++) {
    const g = got[i], w = want[i];
    if (Number.isNaN(w) && Number.isNaN(g)) continue;
    if (w === g) continue;
    const err = Math.abs(g - w);
    const lim = tol.atol + tol.rtol * Math.abs(scale ? scale[i] : w);
    const bad = !(err <= lim);
    const r = Number.isNaN(err) ? Infinity : lim > 0 ? err / lim : Infinity;
    if (r > ratio) ratio = r;
    if (Number.isNaN(err) || err > maxError) maxError = Number.isNaN(err) ? Infinity : err;
    if (bad) {
      if (firstBad < 0) firstBad = i;
      if (!(err <= worstBad)) {
        worstBad = err;
        worstAt = i;
      }
    }
  }
  return { ok: firstBad < 0, count: got.length, maxError, ratio, firstBad, worstAt, worstBad };
}
