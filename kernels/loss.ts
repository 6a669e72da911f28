/**
 * Losses: mean squared error, binary cross-entropy on probabilities, and the masked row MSE of
 * HE2Gene-Spat's spatial constraint. Each returns a scalar tensor `[]` that stays on the GPU.
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
import { defineKernel, type Kernel, kernelCache } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { defineOp, needsGrad } from "../engine/autograd.ts";

/** Loss kinds with a GPU kernel. */
export type LossKind = "mse" | "bce" | "masked_mse";

const WG = 256;
/** Elements one workgroup of the partial pass sums (32 per thread). */
const CHUNK = 8192;
const EW = 128;

const cache = kernelCache<Kernel>();

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

// part[w] = Σ term(i) over i ∈ [w·CHUNK, min((w+1)·CHUNK, n)).   a, b: [n]; m: [n / g]; part: [parts]
function partialKernel(kind: LossKind): Kernel {
  const masked = kind === "masked_mse";
  return cache(`partial:${kind}`, () =>
    defineKernel({
      name: `loss_${kind}_partial`,
      bindings: [
        { name: "a", access: "read" },
        { name: "b", access: "read" },
        ...(masked ? [{ name: "m", access: "read" as const }] : []),
        { name: "part", access: "read_write" },
      ],
      uniforms: { n: "u32", parts: "u32", g: "u32" },
      workgroupSize: [WG],
      body: String.raw`
${kind === "bce" ? BCE_FNS : ""}
var<workgroup> sh: array<f32, ${WG}>;
@compute @workgroup_size(${WG}) fn main(@builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let w = wid.x + wid.y * nwg.x;
  if (w >= p.parts) { return; }   // uniform per workgroup
  let end = min((w + 1u) * ${CHUNK}u, p.n);
  var acc = 0.0;
  var comp = 0.0;
  for (var i = w * ${CHUNK}u + t; i < end; i += ${WG}u) {
    ${TERM[kind]}
    let yk = v - comp; let tk = acc + yk; comp = (tk - acc) - yk; acc = tk;
  }
  sh[t] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (t < s) { sh[t] = sh[t] + sh[t + s]; }
    workgroupBarrier();
  }
  if (t == 0u) { part[w] = sh[0]; }
}`,
    }) as unknown as Kernel);
}

// y[0] = Σ part · scale. For the masked loss scale = 1 / (rows held · g), or 0 when no row holds.
// part: [parts]; m: [rows]; y: [1]
function finalKernel(masked: boolean): Kernel {
  return cache(`final:${masked}`, () =>
    defineKernel({
      name: `loss_${masked ? "masked_" : ""}final`,
      bindings: [
        { name: "part", access: "read" },
        ...(masked ? [{ name: "m", access: "read" as const }] : []),
        { name: "y", access: "read_write" },
      ],
      uniforms: { parts: "u32", rows: "u32", g: "u32", scale: "f32" },
      workgroupSize: [WG],
      body: String.raw`
var<workgroup> sh: array<f32, ${WG}>;
var<workgroup> shc: array<f32, ${WG}>;
@compute @workgroup_size(${WG}) fn main(@builtin(local_invocation_index) t: u32) {
  var acc = 0.0;
  var comp = 0.0;
  for (var k = t; k < p.parts; k += ${WG}u) {
    let yk = part[k] - comp; let tk = acc + yk; comp = (tk - acc) - yk; acc = tk;
  }
  var cnt = 0.0;
  ${masked ? `for (var r = t; r < p.rows; r += ${WG}u) { cnt += select(0.0, 1.0, m[r] != 0.0); }` : ""}
  sh[t] = acc;
  shc[t] = cnt;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (t < s) { sh[t] = sh[t] + sh[t + s]; shc[t] = shc[t] + shc[t + s]; }
    workgroupBarrier();
  }
  if (t == 0u) {
    ${
        masked
          ? "let c = shc[0]; y[0] = select(0.0, sh[0] / (c * f32(p.g)), c > 0.0);"
          : "y[0] = sh[0] * p.scale;"
      }
  }
}`,
    }) as unknown as Kernel);
}

// s[0] = 1 / (rows held · g), or 0 when none holds (the masked loss's mean factor, for backward).
function maskScaleKernel(): Kernel {
  return cache("mask_scale", () =>
    defineKernel({
      name: "loss_mask_scale",
      bindings: [{ name: "m", access: "read" }, { name: "s", access: "read_write" }],
      uniforms: { rows: "u32", g: "u32" },
      workgroupSize: [WG],
      body: String.raw`
var<workgroup> shc: array<f32, ${WG}>;
@compute @workgroup_size(${WG}) fn main(@builtin(local_invocation_index) t: u32) {
  var cnt = 0.0;
  for (var r = t; r < p.rows; r += ${WG}u) { cnt += select(0.0, 1.0, m[r] != 0.0); }
  shc[t] = cnt;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (t < k) { shc[t] = shc[t] + shc[t + k]; }
    workgroupBarrier();
  }
  if (t == 0u) { let c = shc[0]; s[0] = select(0.0, 1.0 / (c * f32(p.g)), c > 0.0); }
}`,
    }) as unknown as Kernel);
}

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

// ga[i] = gy[0]·scale·∂term/∂a; gb[i] likewise (when withB). a, b, ga, gb: [n]; m: [n / g]; s: [1]
function backwardKernel(kind: LossKind, withB: boolean): Kernel {
  const masked = kind === "masked_mse";
  return cache(`backward:${kind}:${withB}`, () =>
    defineKernel({
      name: `loss_${kind}_backward${withB ? "_ab" : ""}`,
      bindings: [
        { name: "a", access: "read" },
        { name: "b", access: "read" },
        ...(masked ? [{ name: "m", access: "read" as const }, { name: "s", access: "read" as const }] : []),
        { name: "gy", access: "read" },
        { name: "ga", access: "read_write" },
        ...(withB ? [{ name: "gb", access: "read_write" as const }] : []),
      ],
      uniforms: { n: "u32", g: "u32", scale: "f32" },
      workgroupSize: [EW],
      body: String.raw`
${kind === "bce" ? BCE_FNS : ""}
@compute @workgroup_size(${EW}) fn main(@builtin(global_invocation_id) gid: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * WG_X);
  if (i >= p.n) { return; }
  let c = gy[0] * ${masked ? "s[0]" : "p.scale"};
  ${GRAD[kind].a}
  ga[i] = c * k;
  ${withB ? `gb[i] = c * (${GRAD[kind].b});` : ""}
}`,
    }) as unknown as Kernel);
}

function checkPair(op: string, a: Tensor, b: Tensor): void {
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
}

// Partial pass + final pass. `mask` only for the masked loss (rows = mask.size, g = columns).
function lossForward(kind: LossKind, a: Tensor, b: Tensor, mask?: Tensor): Tensor {
  const e = a.engine;
  const n = a.size;
  const rows = mask?.size ?? 0;
  const g = mask ? (rows === 0 ? 0 : n / rows) : 1;
  if (n === 0) return e.tensor([mask ? 0 : NaN], []); // PyTorch: mean of nothing is NaN
  const parts = Math.ceil(n / CHUNK);
  const part = e.empty([parts], `${kind} partials`);
  e.run(partialKernel(kind), {
    bindings: mask ? [a, b, mask, part] : [a, b, part],
    uniforms: { n, parts, g },
    workgroups: grid(parts, 1),
    info: `[${a.shape}]→[${parts}]`,
  });
  const y = e.empty([], kind);
  e.run(finalKernel(!!mask), {
    bindings: mask ? [part, mask, y] : [part, y],
    uniforms: { parts, rows, g, scale: 1 / n },
    workgroups: [1],
    info: `[${parts}]→[]`,
  });
  part.dispose();
  return y;
}

function lossBackward(
  kind: LossKind,
  gy: Tensor,
  a: Tensor,
  b: Tensor,
  withB: boolean,
  mask?: Tensor,
): [Tensor, Tensor | null] {
  const e = a.engine;
  const n = a.size;
  const ga = e.empty(a.shape, `${kind} grad`);
  const gb = withB ? e.empty(b.shape, `${kind} grad`) : null;
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
  e.run(backwardKernel(kind, withB), {
    bindings: [a, b, ...(mask ? [mask, s!] : []), gy, ga, ...(gb ? [gb] : [])],
    uniforms: { n, g, scale: 1 / n },
    workgroups: grid(n, EW),
    info: `[${a.shape}]`,
  });
  s?.dispose();
  return [ga, gb];
}

const mseOp = defineOp<[Tensor, Tensor], void, void>({
  name: "mse_loss",
  forward: ([p, t]) => {
    checkPair("mseLoss", p, t);
    return { output: lossForward("mse", p, t), saved: undefined };
  },
  backward: (gy, _s, [p, t]) => {
    const [gp, gt] = lossBackward("mse", gy, p, t, needsGrad(t));
    return [gp, gt];
  },
});

const bceOp = defineOp<[Tensor, Tensor], void, void>({
  name: "bce_loss",
  forward: ([p, t]) => {
    checkPair("bceLoss", p, t);
    return { output: lossForward("bce", p, t), saved: undefined };
  },
  backward: (gy, _s, [p, t]) => {
    const [gp, gt] = lossBackward("bce", gy, p, t, needsGrad(t));
    return [gp, gt];
  },
});

const maskedOp = defineOp<[Tensor, Tensor, Tensor], void, void>({
  name: "masked_mse_loss",
  forward: ([p, t, m]) => {
    checkPair("maskedMseLoss", p, t);
    if (p.rank !== 2 || m.size !== p.shape[0]) {
      throw new RangeError(
        `Cannot compute maskedMseLoss: prediction has shape [${p.shape}] and mask [${m.shape}]; ` +
          `expected [B, G] and [B]`,
      );
    }
    return { output: lossForward("masked_mse", p, t, m), saved: undefined };
  },
  backward: (gy, _s, [p, t, m]) => {
    const [gp, gt] = lossBackward("masked_mse", gy, p, t, needsGrad(t), m);
    return [gp, gt, null];
  },
});

/**
 * Mean squared error over all elements (PyTorch `MSELoss()`); a scalar tensor `[]`. Differentiable in
 * both inputs.
 *
 * @example
 * ```ts
 * const loss = mseLoss(pred, target); // pred, target: [B, G] → []
 * ```
 */
export const mseLoss = (pred: Tensor, target: Tensor): Tensor => mseOp([pred, target]);

/**
 * Binary cross-entropy on probabilities (PyTorch `BCELoss()`): logs clamped at −100, so `p` = 0 or 1
 * gives a finite loss and gradient. Differentiable in both inputs (the target's gradient is that of the
 * clamped forward, `max(log1p(−p), −100) − max(log p, −100)`, over N).
 *
 * @example
 * ```ts
 * const loss = bceLoss(sigmoid(logits), labels); // [B, G] → []
 * ```
 */
export const bceLoss = (prob: Tensor, target: Tensor): Tensor => bceOp([prob, target]);

/**
 * Mean squared error over the rows `b` with `mask[b] ≠ 0`:
 * `Σ_{b held} Σ_g (pred − target)² / (rows held · G)`, and 0 (with zero gradients) when no row holds.
 * HE2Gene-Spat's spatial constraint: `pred` are a spot's predicted target genes, `target` the mean
 * prediction of its same-label neighbours; both receive gradients, the mask none.
 *
 * @example
 * ```ts
 * const loss = maskedMseLoss(pred, neighbourMean, hasNeighbours); // [B, G], [B, G], [B] → []
 * ```
 */
export const maskedMseLoss = (pred: Tensor, target: Tensor, mask: Tensor): Tensor =>
  maskedOp([pred, target, mask]);

// ---------------------------------------------------------------- CPU references (float64)

/** Loss value and gradients from a CPU reference. */
export interface LossCpu {
  loss: number;
  /** d loss / d first input. */
  grad: Float64Array;
  /** d loss / d target. */
  gradTarget: Float64Array;
}

/** CPU reference of {@linkcode mseLoss}, forward and backward, in float64. */
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

/** CPU reference of {@linkcode bceLoss}, forward and backward, in float64. */
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

/** CPU reference of {@linkcode maskedMseLoss} (`p`, `t`: [rows, g] row-major; `m`: [rows]), in float64. */
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
