/**
 * Loss kernels: mean squared error, binary cross-entropy on probabilities, and the masked row MSE of
 * HE2Gene-Spat's spatial constraint; launchers (`lossForward`, `lossBackward`) and CPU references. Each
 * loss is a scalar tensor `[]` that stays on the GPU. The differentiable `mseLoss`, `bceLoss` and
 * `maskedMseLoss` are in `ops/loss.ts`.
 *
 * Forward is two dispatches: workgroup `w` sums the per-element terms of `[w·CHUNK, (w+1)·CHUNK)`
 * (compensated per thread, a tree across the 256 threads) into `part[w]`; one workgroup then sums the
 * partials and scales. Backward is one elementwise dispatch that reads the output gradient `gy[0]` from
 * the GPU. All outputs and gradients are new tensors (overwrite); nothing accumulates.
 *
 * Formulas follow PyTorch (`reduction="mean"`):
 * - MSELoss: `mean((p − t)²)`.
 * - BCELoss (aten/src/ATen/native/Loss.cpp, `binary_cross_entropy_out_cpu`):
 *   `mean((t − 1)·max(log1p(−p), −100) − t·max(log p, −100))`; backward
 *   `(p − t) / max((1 − p)·p, 1e-12) / N` (`binary_cross_entropy_backward`, EPSILON = 1e-12).
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import {
  chunkSum,
  LINEAR_ID,
  linearEntry,
  stridedSum,
  treeReduce,
  wgsl,
  WORKGROUP_ID,
  workgroupEntry,
} from "./_wgsl.ts";

/** Loss kinds with a GPU kernel. */
export type LossKind = "mse" | "bce" | "masked_mse";

/** The public op of each kind, named in error messages. */
const OP_NAME: Record<LossKind, string> = { mse: "mseLoss", bce: "bceLoss", masked_mse: "maskedMseLoss" };

const WG = 256;
/** Elements one workgroup of the partial pass sums (32 per thread). */
const CHUNK = 8192;
const EW = 128;

// Clamped logs of BCE. WGSL leaves log(0) undefined, so 0 is mapped to the clamp explicitly; log1p(x) uses
// Goldberg's trick log(u)·x/(u − 1), u = 1 + x, which keeps the relative accuracy for small |x|.
const BCE_FNS = String.raw`
fn clamped_log(x: f32) -> f32 {
  if (x <= 0.0) { return -100.0; }
  return max(log(x), -100.0);
}
fn clamped_log1m(q: f32) -> f32 {   // max(log1p(-q), -100)
  let x = -q;
  let u = 1.0 + x;
  if (u <= 0.0) { return -100.0; }
  if (u == 1.0) { return x; }
  return max(log(u) * x / (u - 1.0), -100.0);
}`;

// Per-element loss term v for element i (before the mean).
const TERM: Record<LossKind, string> = {
  mse: "let d = a[i] - b[i]; let v = d * d;",
  bce: "let q = a[i]; let tv = b[i]; let v = (tv - 1.0) * clamped_log1m(q) - tv * clamped_log(q);",
  masked_mse: "let d = select(0.0, a[i] - b[i], m[i / p.g] != 0.0); let v = d * d;",
};

// shc[0] = rows r with m[r] ≠ 0 (after the statements; every invocation of the workgroup runs them).
const COUNT_HELD = `var cnt = 0.0;
  for (var r = t; r < p.rows; r += ${WG}u) { cnt += select(0.0, 1.0, m[r] != 0.0); }
  shc[t] = cnt;
  ${treeReduce("shc", WG, (x, y) => `${x} + ${y}`)}`;

// part[w] = Σ term(i) over i ∈ [w·CHUNK, min((w+1)·CHUNK, n)).   a, b: [n]; m: [n / g]; part: [parts]
const partialKernel = variants("loss_partial", (p: { kind: LossKind }) => ({
  bindings: [
    { name: "a", access: "read" },
    { name: "b", access: "read" },
    ...(p.kind === "masked_mse" ? [{ name: "m", access: "read" as const }] : []),
    { name: "part", access: "read_write" },
  ],
  uniforms: { n: "u32", parts: "u32", g: "u32" },
  workgroupSize: [WG],
  body: wgsl`
#if ${p.kind === "bce"}
${BCE_FNS}
#endif
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.parts) { return; }   // uniform per workgroup
  ${chunkSum(WG, CHUNK, "p.n", TERM[p.kind])}
  if (t == 0u) { part[w] = sh[0]; }
}`,
}));

// y[0] = Σ part · scale. For the masked loss scale = 1 / (rows held · g), or 0 when no row holds.
// part: [parts]; m: [rows]; y: [1]
const finalKernel = variants("loss_final", (p: { masked: boolean }) => ({
  bindings: [
    { name: "part", access: "read" },
    ...(p.masked ? [{ name: "m", access: "read" as const }] : []),
    { name: "y", access: "read_write" },
  ],
  uniforms: { parts: "u32", rows: "u32", g: "u32", scale: "f32" },
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sh: array<f32, ${WG}>;
#if ${p.masked}
var<workgroup> shc: array<f32, ${WG}>;
#endif
${workgroupEntry(WG)} {
  ${stridedSum(WG, "p.parts", "part[k]")}
#if ${p.masked}
  ${COUNT_HELD}
  if (t == 0u) { let c = shc[0]; y[0] = select(0.0, sh[0] / (c * f32(p.g)), c > 0.0); }
#else
  if (t == 0u) { y[0] = sh[0] * p.scale; }
#endif
}`,
}));

// s[0] = 1 / (rows held · g), or 0 when none holds (the masked loss's mean factor, for backward).
// m: [rows]; s: [1]
const maskScaleKernel = single("loss_mask_scale", () => ({
  bindings: [{ name: "m", access: "read" }, { name: "s", access: "read_write" }],
  uniforms: { rows: "u32", g: "u32" },
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> shc: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${COUNT_HELD}
  if (t == 0u) { let c = shc[0]; s[0] = select(0.0, 1.0 / (c * f32(p.g)), c > 0.0); }
}`,
}));

// d loss / d a and (optionally) d loss / d b, scaled by gy[0] and the mean factor.
const GRAD: Record<LossKind, { a: string; b: string }> = {
  mse: {
    a: "let k = 2.0 * (a[i] - b[i]);",
    b: "-k",
  },
  bce: {
    a: "let q = a[i]; let tv = b[i]; let k = (q - tv) / max((1.0 - q) * q, 1e-12);",
    // d/dt of the clamped forward: log1p(−p) − log p, each clamped at −100 (PyTorch: −logit(p), unclamped).
    b: "clamped_log1m(q) - clamped_log(q)",
  },
  masked_mse: {
    a: "let k = select(0.0, 2.0 * (a[i] - b[i]), m[i / p.g] != 0.0);",
    b: "-k",
  },
};

// ga[i] = gy[0]·scale·∂term/∂a; gb[i] likewise (with `target`). a, b, ga, gb: [n]; m: [n / g]; s: [1]
const backwardKernel = variants("loss_backward", (p: { kind: LossKind; target: boolean }) => {
  const masked = p.kind === "masked_mse";
  return {
    bindings: [
      { name: "a", access: "read" },
      { name: "b", access: "read" },
      ...(masked ? [{ name: "m", access: "read" as const }, { name: "s", access: "read" as const }] : []),
      { name: "gy", access: "read" },
      { name: "ga", access: "read_write" },
      ...(p.target ? [{ name: "gb", access: "read_write" as const }] : []),
    ],
    uniforms: { n: "u32", g: "u32", scale: "f32" },
    workgroupSize: [EW],
    body: wgsl`
#if ${p.kind === "bce"}
${BCE_FNS}
#endif
${linearEntry(EW)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
#if ${masked}
  let c = gy[0] * s[0];
#else
  let c = gy[0] * p.scale;
#endif
  ${GRAD[p.kind].a}
  ga[i] = c * k;
#if ${p.target}
  gb[i] = c * (${GRAD[p.kind].b});
#endif
}`,
  };
});

function checkInputs(kind: LossKind, a: Tensor, b: Tensor, mask?: Tensor): void {
  const op = OP_NAME[kind];
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) {
    throw new TypeError(`Cannot compute ${op}: inputs must be Tensors`);
  }
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new RangeError(
      `Cannot compute ${op}: input has shape [${a.shape}], target has shape [${b.shape}]; they must match`,
    );
  }
  if (a.bytes > a.engine.maxBinding) {
    throw new RangeError(
      `Cannot compute ${op} of shape [${a.shape}]: ${a.bytes} bytes exceed one storage binding ` +
        `(${a.engine.maxBinding}); use a smaller batch`,
    );
  }
  if (kind === "masked_mse" && (a.rank !== 2 || !mask || mask.size !== a.shape[0])) {
    throw new RangeError(
      `Cannot compute ${op}: prediction has shape [${a.shape}] and mask [${mask?.shape}]; ` +
        `expected [B, G] and [B]`,
    );
  }
}

/**
 * The mean loss of `kind` over `[pred, target]` as a scalar tensor `[]` (no autograd; see `ops/loss.ts`): a
 * partial pass, then a final pass. `mask` ([B], the rows whose value ≠ 0 count) only for `masked_mse`, with
 * `pred` of shape [B, G].
 * Throws a `TypeError` / `RangeError` naming the op and the shapes.
 *
 * @example
 * ```ts
 * const loss = lossForward("bce", [prob, target]); // [B, G], [B, G] → []
 * ```
 */
export function lossForward(
  kind: LossKind,
  [a, b]: readonly [Tensor, Tensor],
  options: { mask?: Tensor } = {},
): Tensor {
  const { mask } = options;
  checkInputs(kind, a, b, mask);
  const e = a.engine;
  const n = a.size;
  const rows = mask?.size ?? 0;
  const g = mask ? (rows === 0 ? 0 : n / rows) : 1;
  if (n === 0) return e.tensor([mask ? 0 : NaN], []); // PyTorch: mean of nothing is NaN
  const parts = Math.ceil(n / CHUNK);
  const part = e.empty([parts], `${kind} partials`);
  e.run(partialKernel({ kind }), {
    bindings: mask ? [a, b, mask, part] : [a, b, part],
    uniforms: { n, parts, g },
    workgroups: grid(parts, 1),
    info: `[${a.shape}]→[${parts}]`,
  });
  const y = e.empty([], kind);
  e.run(finalKernel({ masked: !!mask }), {
    bindings: mask ? [part, mask, y] : [part, y],
    uniforms: { parts, rows, g, scale: 1 / n },
    workgroups: [1],
    info: `[${parts}]→[]`,
  });
  part.dispose();
  return y;
}

/** Options for {@linkcode lossBackward}. */
export interface LossBackwardOptions {
  /** Also compute the gradient of the target (default false: `null`). */
  target?: boolean;
  /** The mask of `masked_mse`. */
  mask?: Tensor;
}

/**
 * Gradients `[d loss / d pred, d loss / d target | null]` of {@linkcode lossForward} given the output
 * gradient `gy` ([] or [1], read on the GPU); new tensors.
 *
 * @example
 * ```ts
 * const [gp, gt] = lossBackward("mse", gy, [pred, target], { target: true });
 * ```
 */
export function lossBackward(
  kind: LossKind,
  gy: Tensor,
  [a, b]: readonly [Tensor, Tensor],
  options: LossBackwardOptions = {},
): [Tensor, Tensor | null] {
  const { mask, target = false } = options;
  const e = a.engine;
  const n = a.size;
  const ga = e.empty(a.shape, `${kind} grad`);
  const gb = target ? e.empty(b.shape, `${kind} grad`) : null;
  if (n === 0) return [ga, gb];
  const g = mask ? n / mask.size : 1;
  let s: Tensor | null = null;
  if (mask) {
    s = e.empty([1], "mask scale");
    e.run(maskScaleKernel(), {
      bindings: [mask, s],
      uniforms: { rows: mask.size, g },
      workgroups: [1],
      info: `[${mask.size}]`,
    });
  }
  e.run(backwardKernel({ kind, target }), {
    bindings: [a, b, ...(mask ? [mask, s!] : []), gy, ga, ...(gb ? [gb] : [])],
    uniforms: { n, g, scale: 1 / n },
    workgroups: grid(n, EW),
    info: `[${a.shape}]`,
  });
  s?.dispose();
  return [ga, gb];
}

// ---------------------------------------------------------------- CPU references (float64)

/** Loss value and gradients from a CPU reference. */
export interface LossCpu {
  loss: number;
  /** d loss / d first input. */
  grad: Float64Array;
  /** d loss / d target. */
  gradTarget: Float64Array;
}

/** CPU reference of `mseLoss` (ops/loss.ts), forward and backward, in float64. */
export function mseLossCpu(p: ArrayLike<number>, t: ArrayLike<number>): LossCpu {
  const n = p.length;
  const grad = new Float64Array(n), gradTarget = new Float64Array(n);
  let s = 0;
  for (let i = 0; i < n; i++) {
    const d = p[i] - t[i];
    s += d * d;
    grad[i] = (2 * d) / n;
    gradTarget[i] = -grad[i];
  }
  return { loss: s / n, grad, gradTarget };
}

/** CPU reference of `bceLoss` (ops/loss.ts), forward and backward, in float64. */
export function bceLossCpu(p: ArrayLike<number>, t: ArrayLike<number>): LossCpu {
  const n = p.length;
  const grad = new Float64Array(n), gradTarget = new Float64Array(n);
  let s = 0;
  for (let i = 0; i < n; i++) {
    const l1 = Math.max(Math.log(p[i]), -100);
    const l0 = Math.max(Math.log1p(-p[i]), -100);
    s += (t[i] - 1) * l0 - t[i] * l1;
    grad[i] = (p[i] - t[i]) / Math.max((1 - p[i]) * p[i], 1e-12) / n;
    gradTarget[i] = (l0 - l1) / n;
  }
  return { loss: s / n, grad, gradTarget };
}

/** CPU reference of `maskedMseLoss` (ops/loss.ts; `p`, `t`: [rows, g] row-major; `m`: [rows]), in float64. */
export function maskedMseLossCpu(p: ArrayLike<number>, t: ArrayLike<number>, m: ArrayLike<number>): LossCpu {
  const rows = m.length, n = p.length, g = rows ? n / rows : 0;
  let held = 0;
  for (let r = 0; r < rows; r++) if (m[r] !== 0) held++;
  const scale = held ? 1 / (held * g) : 0;
  const grad = new Float64Array(n), gradTarget = new Float64Array(n);
  let s = 0;
  for (let i = 0; i < n; i++) {
    if (m[Math.floor(i / g)] === 0) continue;
    const d = p[i] - t[i];
    s += d * d;
    grad[i] = 2 * d * scale;
    gradTarget[i] = -grad[i];
  }
  return { loss: s * scale, grad, gradTarget };
}
