/**
 * Ridge regression in closed form on the GPU, with the regularisation chosen on a validation set: the
 * `--head ridge` of frozen-encoder training (issue 17 item 4). scikit-learn's `Ridge(alpha=λ,
 * fit_intercept=True)` semantics: W, b minimise ‖Y − X·Wᵀ − 1bᵀ‖² + λ‖W‖², solved by centring,
 *
 *   Xc = X − 1μₓᵀ, Yc = Y − 1μ_yᵀ,  G = XcᵀXc (D, D),  R = YcᵀXc (K, D),
 *   W = R·(G + λI)⁻¹ (K, D),  b = μ_y − W·μₓ,
 *
 * with G + λI factored by Cholesky (float32, kernels/linalg.ts) and W solved row by row. The whole fit runs
 * on the GPU; only the per-λ validation errors (one readback for the whole grid) and W, b come back.
 *
 * Sizes: N up to ~20 000, D up to 2 560, K up to ~20 000. R (K × D, 160 MB for 19 950 × 2 048) is larger
 * than one storage binding, so it is computed and solved in chunks of target columns (rows of R); X, Y and
 * the validation tensors may exceed one binding too (read in runs of whole rows). G must fit one binding
 * (D ≤ 5 792 at 128 MiB).
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { Tensor } from "../engine/tensor.ts";
import { bindingElements } from "../kernels/_ranges.ts";
import { binary } from "../kernels/elementwise.ts";
import { matmulForward } from "../kernels/matmul.ts";
import { reduce } from "../kernels/reduce.ts";
import {
  addDiagonal,
  choleskyInPlace,
  choleskySolveInPlace,
  crossprod,
  diagonal,
  MAX_ROWS,
  squaredErrorSums,
} from "../kernels/linalg.ts";

/** A fitted ridge regression, in PyTorch's `nn.Linear` layout. */
export interface RidgeFit {
  /** (K, D) row-major: out × in. */
  weight: Float32Array;
  /** (K). */
  bias: Float32Array;
  /** The chosen regularisation (absolute, on the centred Gram matrix XcᵀXc, as scikit-learn's `alpha`). */
  lambda: number;
  /** The grid tried. */
  lambdas: number[];
  /** Validation MSE (mean over the selected targets and validation rows) per λ; [] without validation. */
  valMse: number[];
}

/** Options of {@linkcode fitRidge}. */
export interface RidgeOptions {
  /**
   * The λ to try, absolute values ≥ 0. Default: 8 values s·10ᵏ, k = −3 … 4, with s = trace(XcᵀXc)/D (the
   * mean eigenvalue of the centred Gram matrix, so the grid follows the features' scale and N).
   */
  lambdas?: number[];
  /** Validation features (Nv, D) and targets (Nv, K); without them the middle of the grid is used. */
  xVal?: Tensor;
  yVal?: Tensor;
  /**
   * Choose λ on the first M target columns only (e.g. the 250 target genes when Y also holds the 19 699
   * auxiliary genes); default all K.
   */
  selectColumns?: number;
  /** Called after each λ of the grid and each chunk of the final solve (`done` of `total`). */
  onProgress?: (done: number, total: number) => void;
}

/** Relative grid of the default λ: 10⁻³ … 10⁴ times trace(XcᵀXc)/D. */
const DEFAULT_EXPONENTS = [-3, -2, -1, 0, 1, 2, 3, 4];

function checkInput(x: Tensor, what: string, rank = 2): void {
  if (!(x instanceof Tensor)) throw new TypeError(`Cannot fit ridge regression: ${what} must be a Tensor`);
  if (x.rank !== rank) {
    throw new RangeError(`Cannot fit ridge regression: ${what} must be 2-D, current shape is [${x.shape}]`);
  }
}

/** Rows of R per chunk: R (chunk, D) fits one binding; a multiple of 4 keeps Y's columns read as vec4. */
function chunkRows(e: Engine, d: number, k: number): number {
  let c = Math.min(k, MAX_ROWS, Math.floor(bindingElements(e) / Math.max(d, 1)));
  if (c < k && c >= 8) c -= c % 4;
  return Math.max(1, c);
}

/**
 * Fit ridge regression in closed form on the GPU: W, b minimising ‖Y − X·Wᵀ − 1bᵀ‖² + λ‖W‖² (intercept by
 * centring, as scikit-learn's `Ridge(fit_intercept=True)`), for each λ of the grid the validation MSE on
 * the selected target columns, and the fit of the λ with the least validation MSE (the middle of the
 * grid without a validation set). A Cholesky pivot that is not positive (G + λI not positive definite in
 * float32: λ too small for the features' rank) throws a `RangeError` that names λ.
 *
 * @example
 * ```ts
 * const fit = await fitRidge(engine, features, targets, { xVal, yVal, selectColumns: 250 });
 * console.log(fit.lambda, fit.valMse); // weight (K, D), bias (K)
 * ```
 */
export async function fitRidge(
  engine: Engine,
  x: Tensor,
  y: Tensor,
  o: RidgeOptions = {},
): Promise<RidgeFit> {
  const op = "Cannot fit ridge regression";
  checkInput(x, "x");
  checkInput(y, "y");
  const [n, d] = x.shape, k = y.shape[1];
  if (y.shape[0] !== n) throw new RangeError(`${op}: x [${x.shape}] and y [${y.shape}] have different rows`);
  if (n < 1) throw new RangeError(`${op}: x has no rows`);
  if (x.engine !== engine || y.engine !== engine) {
    throw new TypeError(`${op}: x and y belong to another engine`);
  }
  if ((o.xVal === undefined) !== (o.yVal === undefined)) {
    throw new TypeError(`${op}: give both xVal and yVal, or neither`);
  }
  const val = o.xVal !== undefined && o.yVal !== undefined;
  if (val) {
    checkInput(o.xVal!, "xVal");
    checkInput(o.yVal!, "yVal");
    const [nv, dv] = o.xVal!.shape, [nv2, kv] = o.yVal!.shape;
    if (dv !== d || kv !== k || nv2 !== nv) {
      throw new RangeError(
        `${op}: xVal [${o.xVal!.shape}] and yVal [${
          o.yVal!.shape
        }] do not match x [${x.shape}] and y [${y.shape}]`,
      );
    }
    if (nv < 1) throw new RangeError(`${op}: the validation set has no rows`);
  }
  const sel = o.selectColumns ?? k;
  if (!Number.isInteger(sel) || sel < 1 || sel > k) {
    throw new RangeError(`${op}: selectColumns must be an integer in [1, ${k}], current value is ${sel}`);
  }
  if (o.lambdas !== undefined) {
    if (o.lambdas.length === 0 || o.lambdas.some((l) => !Number.isFinite(l) || l < 0)) {
      throw new RangeError(`${op}: lambdas must be finite values ≥ 0, current value is [${o.lambdas}]`);
    }
  }
  if (d * d * 4 > engine.maxBinding) {
    throw new RangeError(
      `${op}: the ${d} × ${d} Gram matrix exceeds one storage binding (${engine.maxBinding} B)`,
    );
  }

  const e = engine;
  const owned: Tensor[] = [];
  const own = <T extends Tensor>(t: T): T => (owned.push(t), t);
  try {
    // Means (D), (K); G = XcᵀXc (D, D).
    const mx = own(reduce("mean", x, { axes: 0 }));
    const my = own(reduce("mean", y, { axes: 0 }));
    const g = own(crossprod(x, x, { aMean: mx, bMean: mx, symmetric: true }));
    let lambdas = o.lambdas;
    if (!lambdas) {
      const diag = own(diagonal(g));
      const tr = (await diag.toArray()).reduce((s, v) => s + v, 0);
      const s = tr > 0 && Number.isFinite(tr) ? tr / d : 1;
      lambdas = DEFAULT_EXPONENTS.map((p) => s * 10 ** p);
    }
    const nl = lambdas.length;
    const kc = chunkRows(e, d, k);
    const chunks: [number, number][] = [];
    for (let k0 = 0; k0 < k; k0 += kc) chunks.push([k0, Math.min(kc, k - k0)]);
    const total = (val ? nl : 0) + chunks.length;
    let done = 0;
    const f = own(e.empty([d, d], "ridge factor"));
    const status = own(e.zeros([nl + 1], "ridge status"));
    const rhs = (k0: number, m: number) => crossprod(y, x, { aColumns: [k0, m], aMean: my, bMean: mx });
    const pivotError = (s: number, lam: number) =>
      new RangeError(
        `${op}: the Cholesky factorisation of XcᵀXc + λI met a non-positive pivot (column ${s - 1}) for ` +
          `lambda = ${lam}; the matrix is not positive definite in float32, use a larger lambda`,
      );

    // λ on the validation set: for each λ, factor, solve the selected columns, predict, sum squared
    // errors, and read them back; the best λ so far keeps its factor and its solved columns, so the final
    // fit neither factors again nor solves those columns again.
    let best = Math.floor((nl - 1) / 2);
    const valMse: number[] = [];
    const solved = new Map<number, Tensor>(); // k0 → the best λ's W rows [k0, k0 + m) of the selected columns
    let factor = f;
    if (val) {
      const xv = o.xVal!, yv = o.yVal!, nv = xv.shape[0];
      const xvc = own(binary("sub", xv, mx));
      const sse = own(e.empty([sel], "ridge sse"));
      const bestF = own(e.empty([d, d], "ridge best factor"));
      const work: [number, Tensor, Tensor, Tensor][] = []; // k0, R rows, work, best W rows
      for (const [k0, c] of chunks) {
        if (k0 >= sel) break;
        const m = Math.min(c, sel - k0);
        const w = own(e.empty([m, d], "ridge work")), keep = own(e.empty([m, d], "ridge best"));
        work.push([k0, own(rhs(k0, m)), w, keep]);
        solved.set(k0, keep);
      }
      best = -1;
      for (let i = 0; i < nl; i++) {
        addDiagonal(g, lambdas[i], f);
        choleskyInPlace(f, { status, statusIndex: i });
        for (const [k0, r, w] of work) {
          e.copy(r, w);
          choleskySolveInPlace(f, w);
          const pred = matmulForward(xvc, w, { transposeB: true }); // (Nv, m) = Xvc·Wᵀ
          squaredErrorSums(pred, yv, { yColumn: k0, yMean: my, out: sse, outOffset: k0 });
          pred.dispose();
        }
        const [sums, st] = await Promise.all([sse.toArray(), status.toArray()]);
        if (st[i] !== 0) throw pivotError(st[i], lambdas[i]);
        let sum = 0;
        for (let j = 0; j < sel; j++) sum += sums[j];
        valMse.push(sum / (nv * sel));
        if (Number.isFinite(valMse[i]) && (best < 0 || valMse[i] < valMse[best])) {
          best = i;
          e.copy(f, bestF);
          for (const [, , w, keep] of work) e.copy(w, keep);
        }
        o.onProgress?.(++done, total);
      }
      if (best < 0) throw new RangeError(`${op}: the validation MSE is not finite for any lambda`);
      factor = bestF;
    } else {
      addDiagonal(g, lambdas[best], f);
      choleskyInPlace(f, { status, statusIndex: nl });
    }

    // The fit for the chosen λ, all K columns, chunk by chunk.
    const lambda = lambdas[best];
    const weight = new Float32Array(k * d);
    for (const [k0, c] of chunks) {
      const keep = solved.get(k0);
      let r: Tensor;
      if (keep && keep.shape[0] === c) r = keep;
      else {
        r = own(rhs(k0, c));
        choleskySolveInPlace(factor, r);
      }
      const [data, st] = await Promise.all([r.toArray(), !val && k0 === 0 ? status.toArray() : null]);
      if (st && st[nl] !== 0) throw pivotError(st[nl], lambda);
      weight.set(data, k0 * d);
      r.dispose();
      o.onProgress?.(++done, total);
    }
    const [mux, muy] = await Promise.all([mx.toArray(), my.toArray()]);
    const bias = new Float32Array(k);
    for (let j = 0; j < k; j++) {
      let s = muy[j];
      for (let i = 0; i < d; i++) s -= weight[j * d + i] * mux[i];
      bias[j] = s;
    }
    return { weight, bias, lambda, lambdas: [...lambdas], valMse };
  } finally {
    for (const t of owned) t.dispose();
  }
}
