/**
 * Layer normalisation over the last axis, with PyTorch's semantics (`torch.nn.LayerNorm(C, eps)`; Ba et al.
 * 2016, https://arxiv.org/abs/1607.06450), forward and backward after llm.c's `layernorm_forward` /
 * `layernorm_backward`: forward saves the per-row mean and rstd, backward needs nothing else.
 *
 *   x̂ = (x − mean)·rstd,  rstd = 1/√(var + eps) (biased variance),  y = γ·x̂ + β
 *   dβ = Σ_rows dy,  dγ = Σ_rows dy·x̂
 *   dx = rstd·(γ·dy − mean_c(γ·dy) − x̂·mean_c(γ·dy·x̂))
 *
 * One workgroup per row for the row passes (two-pass mean and variance, tree reductions through workgroup
 * memory); one invocation per column for dγ and dβ (a loop over the rows: deterministic, no atomics).
 * The differentiable `layerNorm` (autograd) is in ops/transformer.ts.
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { single } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { LINEAR_ID, linearEntry, treeReduce, wgsl, WORKGROUP_ID, workgroupEntry } from "./_wgsl.ts";

const WG = 64;

// x: (R, C) → y: (R, C), mean, rstd: (R). Workgroup w owns row w.
const forwardKernel = single("layernorm_forward", () => ({
  bindings: [
    { name: "x", access: "read" },
    { name: "weight", access: "read" },
    { name: "bias", access: "read" },
    { name: "y", access: "read_write" },
    { name: "mean", access: "read_write" },
    { name: "rstd", access: "read_write" },
  ],
  uniforms: { rows: "u32", c: "u32", eps: "f32" },
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.rows) { return; }   // uniform per workgroup
  let base = w * p.c;
  var s = 0.0;
  for (var k = t; k < p.c; k += ${WG}u) { s += x[base + k]; }
  sh[t] = s;
  ${treeReduce("sh", WG, (a, b) => `${a} + ${b}`)}
  let mu = sh[0] / f32(p.c);
  workgroupBarrier();
  var q = 0.0;
  for (var k = t; k < p.c; k += ${WG}u) { let d = x[base + k] - mu; q += d * d; }
  sh[t] = q;
  ${treeReduce("sh", WG, (a, b) => `${a} + ${b}`)}
  let r = inverseSqrt(sh[0] / f32(p.c) + p.eps);
  for (var k = t; k < p.c; k += ${WG}u) {
    y[base + k] = (x[base + k] - mu) * r * weight[k] + bias[k];
  }
  if (t == 0u) {
    mean[w] = mu;
    rstd[w] = r;
  }
}`,
}));

// dy, x: (R, C), weight: (C), mean, rstd: (R) → dx: (R, C). Workgroup w owns row w.
const backwardInputKernel = single("layernorm_backward_input", () => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "x", access: "read" },
    { name: "weight", access: "read" },
    { name: "mean", access: "read" },
    { name: "rstd", access: "read" },
    { name: "dx", access: "read_write" },
  ],
  uniforms: { rows: "u32", c: "u32" },
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sa: array<f32, ${WG}>;
var<workgroup> sb: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.rows) { return; }   // uniform per workgroup
  let base = w * p.c;
  let mu = mean[w];
  let r = rstd[w];
  var a = 0.0;
  var b = 0.0;
  for (var k = t; k < p.c; k += ${WG}u) {
    let g = weight[k] * dy[base + k];
    a += g;
    b += g * (x[base + k] - mu) * r;
  }
  sa[t] = a;
  sb[t] = b;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (t < s) {
      sa[t] += sa[t + s];
      sb[t] += sb[t + s];
    }
    workgroupBarrier();
  }
  let ma = sa[0] / f32(p.c);
  let mb = sb[0] / f32(p.c);
  for (var k = t; k < p.c; k += ${WG}u) {
    let xh = (x[base + k] - mu) * r;
    dx[base + k] = r * (weight[k] * dy[base + k] - ma - xh * mb);
  }
}`,
}));

// dy, x: (R, C), mean, rstd: (R) → dweight = Σ_r dy·x̂, dbias = Σ_r dy: (C). Invocation i owns column i.
const paramGradsKernel = single("layernorm_param_grads", () => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "x", access: "read" },
    { name: "mean", access: "read" },
    { name: "rstd", access: "read" },
    { name: "dweight", access: "read_write" },
    { name: "dbias", access: "read_write" },
  ],
  uniforms: { rows: "u32", c: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.c) { return; }
  var dw = 0.0;
  var db = 0.0;
  for (var r = 0u; r < p.rows; r++) {
    let g = dy[r * p.c + i];
    db += g;
    dw += g * (x[r * p.c + i] - mean[r]) * rstd[r];
  }
  dweight[i] = dw;
  dbias[i] = db;
}`,
}));

function checkParams(op: string, x: Tensor, weight: Tensor, bias: Tensor): [number, number] {
  if (!(x instanceof Tensor) || x.rank < 1) {
    throw new TypeError(`Cannot ${op}: expected a Tensor of rank ≥ 1, current value is ${x?.shape ?? x}`);
  }
  const c = x.shape[x.rank - 1];
  for (const [name, t] of [["weight", weight], ["bias", bias]] as const) {
    if (!(t instanceof Tensor) || t.size !== c) {
      throw new RangeError(`Cannot ${op}: ${name} must have ${c} elements, current value is [${t?.shape}]`);
    }
  }
  return [x.size / Math.max(c, 1), c];
}

/** Output of {@linkcode layerNormForward}. */
export interface LayerNormForward {
  /** Same shape as x. */
  y: Tensor;
  /** Per row (x's shape without the last axis, flattened): the mean. */
  mean: Tensor;
  /** Per row: 1/√(biased var + eps). */
  rstd: Tensor;
}

/**
 * Layer-norm forward over the last axis without autograd: y with the saved per-row `mean` and `rstd`.
 *
 * @example
 * ```ts
 * const { y, mean, rstd } = layerNormForward(x, weight, bias, 1e-6); // x: [B, N, C], weight/bias: [C]
 * ```
 */
export function layerNormForward(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-6): LayerNormForward {
  const [rows, c] = checkParams("layerNorm", x, weight, bias);
  const e = x.engine;
  const y = e.empty(x.shape, "layernorm");
  const mean = e.empty([rows], "layernorm mean");
  const rstd = e.empty([rows], "layernorm rstd");
  if (rows > 0 && c > 0) {
    e.run(forwardKernel(), {
      bindings: [x, weight, bias, y, mean, rstd],
      uniforms: { rows, c, eps },
      workgroups: grid(rows, 1),
      info: `[${x.shape}]`,
    });
  }
  return { y, mean, rstd };
}

/** Gradients returned by {@linkcode layerNormBackward}. */
export interface LayerNormGrads {
  dx: Tensor;
  /** (C): Σ dy·x̂ over the rows. */
  dweight: Tensor;
  /** (C): Σ dy over the rows. */
  dbias: Tensor;
}

/**
 * Layer-norm backward from the statistics saved by {@linkcode layerNormForward}; all three gradients are
 * new tensors.
 *
 * @example
 * ```ts
 * const { dx, dweight, dbias } = layerNormBackward(dy, x, { weight, mean, rstd });
 * ```
 */
export function layerNormBackward(
  dy: Tensor,
  x: Tensor,
  saved: { weight: Tensor; mean: Tensor; rstd: Tensor },
): LayerNormGrads {
  const op = "layerNorm backward";
  const [rows, c] = checkParams(op, x, saved.weight, saved.weight);
  if (!(dy instanceof Tensor) || dy.size !== x.size) {
    throw new RangeError(`Cannot ${op}: dy has shape [${dy?.shape}], input has [${x.shape}]`);
  }
  const e = x.engine;
  const dx = e.empty(x.shape, "layernorm dx");
  const dweight = e.zeros([c], "layernorm dweight");
  const dbias = e.zeros([c], "layernorm dbias");
  if (rows === 0 || c === 0) return { dx, dweight, dbias };
  e.run(backwardInputKernel(), {
    bindings: [dy, x, saved.weight, saved.mean, saved.rstd, dx],
    uniforms: { rows, c },
    workgroups: grid(rows, 1),
    info: `[${x.shape}]`,
  });
  e.run(paramGradsKernel(), {
    bindings: [dy, x, saved.mean, saved.rstd, dweight, dbias],
    uniforms: { rows, c },
    workgroups: grid(c, WG),
    info: `[${x.shape}]→[${c}]`,
  });
  return { dx, dweight, dbias };
}

// ---------------------------------------------------------------- CPU references (float64 arithmetic)

/** CPU reference of {@linkcode layerNormForward}, in float64 (two-pass variance). */
export function layerNormCpu(
  x: ArrayLike<number>,
  c: number,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  eps = 1e-6,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const rows = x.length / c;
  const y = new Float64Array(x.length), mean = new Float64Array(rows), rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let k = 0; k < c; k++) s += x[r * c + k];
    const mu = s / c;
    let q = 0;
    for (let k = 0; k < c; k++) q += (x[r * c + k] - mu) ** 2;
    const rs = 1 / Math.sqrt(q / c + eps);
    for (let k = 0; k < c; k++) y[r * c + k] = (x[r * c + k] - mu) * rs * weight[k] + bias[k];
    mean[r] = mu;
    rstd[r] = rs;
  }
  return { y, mean, rstd };
}

/** CPU reference of {@linkcode layerNormBackward}, in float64 (statistics recomputed from x). */
export function layerNormBackwardCpu(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  c: number,
  weight: ArrayLike<number>,
  eps = 1e-6,
): { dx: Float64Array; dweight: Float64Array; dbias: Float64Array } {
  const rows = x.length / c;
  const { mean, rstd } = layerNormCpu(x, c, weight, new Float64Array(c), eps);
  const dx = new Float64Array(x.length), dweight = new Float64Array(c), dbias = new Float64Array(c);
  for (let r = 0; r < rows; r++) {
    let a = 0, b = 0;
    for (let k = 0; k < c; k++) {
      const i = r * c + k, xh = (x[i] - mean[r]) * rstd[r], g = weight[k] * dy[i];
      a += g;
      b += g * xh;
      dweight[k] += dy[i] * xh;
      dbias[k] += dy[i];
    }
    for (let k = 0; k < c; k++) {
      const i = r * c + k, xh = (x[i] - mean[r]) * rstd[r];
      dx[i] = rstd[r] * (weight[k] * dy[i] - a / c - xh * b / c);
    }
  }
  return { dx, dweight, dbias };
}
