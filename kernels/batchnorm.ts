/**
 * Batch normalisation over NCHW float32 tensors, with PyTorch's semantics
 * (`torch.nn.BatchNorm2d`; Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167).
 *
 * Training mode normalises with the batch statistics (biased variance) and updates `running_mean` and
 * `running_var` in place on the GPU with the *unbiased* variance, as PyTorch does; eval mode normalises
 * with the running statistics. Forward saves the per-channel mean and inverse standard deviation (rstd),
 * llm.c style, and backward needs nothing else:
 *
 *   x̂ = (x − mean)·rstd,  y = γ·x̂ + β
 *   dβ = Σ dy,  dγ = Σ dy·x̂                              (sums over N·H·W per channel)
 *   dx = (γ·rstd/M)·(M·dy − Σdy − x̂·Σ(dy·x̂))             (training, M = N·H·W)
 *   dx = γ·rstd·dy                                          (eval: the statistics are constants)
 *
 * Per-channel statistics take two passes: workgroup (c, part) merges Welford triples of ≤ 4096 values in
 * a tree (Chan et al.'s pairwise update), then one thread per channel merges the parts. Backward's sums
 * use the same split. All outputs and gradients are new tensors (overwrite); nothing accumulates (`+=`),
 * except the running statistics, which are updated in place.
 *
 * @module
 */
import { checkNCHW } from "./check.ts";
import { grid } from "../engine/engine.ts";
import { defineKernel, type Kernel, kernelCache } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { defineOp, isRecording, needsGrad } from "../engine/autograd.ts";

/** Host-side state of one batch-norm layer: PyTorch's `num_batches_tracked`. */
export interface BatchNormState {
  /** Training forward passes seen (state_dict key `num_batches_tracked`). */
  numBatchesTracked: number;
}

/** Options of {@linkcode batchNorm2d}. */
export interface BatchNorm2dOptions {
  /** γ, shape [C] (state_dict key `weight`). */
  weight: Tensor;
  /** β, shape [C] (state_dict key `bias`). */
  bias: Tensor;
  /** Shape [C]; updated in place in training mode, read in eval mode. Optional in training mode. */
  runningMean?: Tensor;
  /** Shape [C]; unbiased. Updated in place in training mode, read in eval mode. */
  runningVar?: Tensor;
  /** Use batch statistics and update the running ones (default false, as `F.batch_norm`). */
  training?: boolean;
  /** Weight of the new batch in the running statistics (default 0.1); `null`: cumulative average. */
  momentum?: number | null;
  /** Added to the variance (default 1e-5). */
  eps?: number;
  /** `numBatchesTracked` is incremented by each training forward that updates running statistics. */
  state?: BatchNormState;
}

/** Options of {@linkcode batchNorm2dInference}. */
export interface BatchNorm2dInferenceOptions {
  weight: Tensor;
  bias: Tensor;
  runningMean: Tensor;
  runningVar: Tensor;
  /** Default 1e-5. */
  eps?: number;
  /** Apply max(·, 0) to the output (default false). */
  relu?: boolean;
}

const WG = 256;
/** Values of one channel that one workgroup of the statistics passes reduces. */
const CHUNK = 4096;
const cache = kernelCache<Kernel>();

// Workgroup id over a 2-D grid (C·P may exceed 65535 workgroups).
const WG_ENTRY = `@compute @workgroup_size(${WG}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) t: u32)`;
const ENTRY = `@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u)`;
const LINEAR_ID = "let i = g.x + g.y * (nwg.x * WG_X);";

// x: (N, C, HW) → part: (C, P, 2) = (mean, M2) of values [q·chunk, (q+1)·chunk) of channel c, where
// value k of a channel is x[k / HW, c, k % HW]. Workgroup w = c·P + q; each thread runs Welford over its
// strided values, then the workgroup merges (n, mean, M2) triples pairwise.
function statsKernel(): Kernel {
  return cache("stats", () =>
    defineKernel({
      name: "batchnorm_stats",
      bindings: [{ name: "x", access: "read" }, { name: "part", access: "read_write" }],
      uniforms: { c: "u32", hw: "u32", m: "u32", chunk: "u32", parts: "u32" },
      workgroupSize: [WG],
      body: String.raw`
var<workgroup> sn: array<f32, ${WG}>;
var<workgroup> smean: array<f32, ${WG}>;
var<workgroup> sm2: array<f32, ${WG}>;
${WG_ENTRY} {
  let w = wid.x + wid.y * nwg.x;
  if (w >= p.c * p.parts) { return; }   // uniform per workgroup
  let ch = w / p.parts;
  let start = (w % p.parts) * p.chunk;
  let end = min(start + p.chunk, p.m);
  var n = 0.0;
  var mean = 0.0;
  var m2 = 0.0;
  for (var k = start + t; k < end; k += ${WG}u) {
    let v = x[((k / p.hw) * p.c + ch) * p.hw + k % p.hw];
    n += 1.0;
    let d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  sn[t] = n;
  smean[t] = mean;
  sm2[t] = m2;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (t < s && sn[t + s] > 0.0) {
      let na = sn[t];
      let nn = na + sn[t + s];
      let d = smean[t + s] - smean[t];
      let f = sn[t + s] / nn;
      smean[t] += d * f;
      sm2[t] += sm2[t + s] + d * d * na * f;
      sn[t] = nn;
    }
    workgroupBarrier();
  }
  if (t == 0u) {
    part[2u * w] = smean[0];
    part[2u * w + 1u] = sm2[0];
  }
}`,
    }) as unknown as Kernel);
}

// part: (C, P, 2) → mean, rstd: (C); with `update`, running_mean / running_var (C) are blended in place:
// r ← (1 − momentum)·r + momentum·batch, with the unbiased variance M2 / (M − 1).
function finalizeKernel(update: boolean): Kernel {
  const running = update
    ? [{ name: "rmean", access: "read_write" }, { name: "rvar", access: "read_write" }] as const
    : [];
  return cache(`finalize:${update}`, () =>
    defineKernel({
      name: `batchnorm_finalize${update ? "_update" : ""}`,
      bindings: [
        { name: "part", access: "read" },
        { name: "mean", access: "read_write" },
        { name: "rstd", access: "read_write" },
        ...running,
      ],
      uniforms: { c: "u32", m: "u32", chunk: "u32", parts: "u32", eps: "f32", momentum: "f32" },
      workgroupSize: [64],
      body: String.raw`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let ch = g.x;
  if (ch >= p.c) { return; }
  var n = 0.0;
  var mu = 0.0;
  var m2 = 0.0;
  for (var q = 0u; q < p.parts; q++) {
    let nb = f32(min(p.chunk, p.m - q * p.chunk));
    let j = 2u * (ch * p.parts + q);
    let nn = n + nb;
    let d = part[j] - mu;
    let f = nb / nn;
    mu += d * f;
    m2 += part[j + 1u] + d * d * n * f;
    n = nn;
  }
  mean[ch] = mu;
  rstd[ch] = 1.0 / sqrt(m2 / f32(p.m) + p.eps);
  ${
        update
          ? `// NOTE: PyTorch's running_var is unbiased (M − 1); the normalisation above is not.
  rmean[ch] = (1.0 - p.momentum) * rmean[ch] + p.momentum * mu;
  rvar[ch] = (1.0 - p.momentum) * rvar[ch] + p.momentum * (m2 / (f32(p.m) - 1.0));`
          : ""
      }
}`,
    }) as unknown as Kernel);
}

// running_mean, running_var: (C) → mean, rstd: (C) for eval mode.
function runningStatsKernel(): Kernel {
  return cache("running", () =>
    defineKernel({
      name: "batchnorm_running_stats",
      bindings: [
        { name: "rmean", access: "read" },
        { name: "rvar", access: "read" },
        { name: "mean", access: "read_write" },
        { name: "rstd", access: "read_write" },
      ],
      uniforms: { c: "u32", eps: "f32" },
      workgroupSize: [64],
      body: String.raw`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let ch = g.x;
  if (ch >= p.c) { return; }
  mean[ch] = rmean[ch];
  rstd[ch] = 1.0 / sqrt(rvar[ch] + p.eps);
}`,
    }) as unknown as Kernel);
}

// y = (x − mean[c])·rstd[c]·γ[c] + β[c] (then max(·, 0) with `relu`), x, y: (N, C, HW).
// With `fromVar` the second statistic is a variance and rstd = 1/√(var + eps) (fused eval path).
function applyKernel(fromVar: boolean, relu: boolean): Kernel {
  return cache(`apply:${fromVar}:${relu}`, () =>
    defineKernel({
      name: `batchnorm_apply${fromVar ? "_running" : ""}${relu ? "_relu" : ""}`,
      bindings: [
        { name: "x", access: "read" },
        { name: "mean", access: "read" },
        { name: fromVar ? "rvar" : "rstd", access: "read" },
        { name: "gamma", access: "read" },
        { name: "beta", access: "read" },
        { name: "y", access: "read_write" },
      ],
      uniforms: { n: "u32", c: "u32", hw: "u32", eps: "f32" },
      workgroupSize: [WG],
      body: String.raw`
${ENTRY} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let ch = (i / p.hw) % p.c;
  let inv = ${fromVar ? "1.0 / sqrt(rvar[ch] + p.eps)" : "rstd[ch]"};
  let v = (x[i] - mean[ch]) * inv * gamma[ch] + beta[ch];
  y[i] = ${relu ? "max(v, 0.0)" : "v"};
}`,
    }) as unknown as Kernel);
}

// dy, x: (N, C, HW) → part: (C, P, 2) = (Σ dy, Σ dy·x̂) over values [q·chunk, (q+1)·chunk) of channel c.
function backwardSumsKernel(): Kernel {
  return cache("bwd_sums", () =>
    defineKernel({
      name: "batchnorm_backward_sums",
      bindings: [
        { name: "dy", access: "read" },
        { name: "x", access: "read" },
        { name: "mean", access: "read" },
        { name: "rstd", access: "read" },
        { name: "part", access: "read_write" },
      ],
      uniforms: { c: "u32", hw: "u32", m: "u32", chunk: "u32", parts: "u32" },
      workgroupSize: [WG],
      body: String.raw`
var<workgroup> sdy: array<f32, ${WG}>;
var<workgroup> sdyx: array<f32, ${WG}>;
${WG_ENTRY} {
  let w = wid.x + wid.y * nwg.x;
  if (w >= p.c * p.parts) { return; }   // uniform per workgroup
  let ch = w / p.parts;
  let start = (w % p.parts) * p.chunk;
  let end = min(start + p.chunk, p.m);
  let mu = mean[ch];
  let r = rstd[ch];
  var a = 0.0;
  var b = 0.0;
  for (var k = start + t; k < end; k += ${WG}u) {
    let j = ((k / p.hw) * p.c + ch) * p.hw + k % p.hw;
    let g = dy[j];
    a += g;
    b += g * (x[j] - mu) * r;
  }
  sdy[t] = a;
  sdyx[t] = b;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (t < s) {
      sdy[t] += sdy[t + s];
      sdyx[t] += sdyx[t + s];
    }
    workgroupBarrier();
  }
  if (t == 0u) {
    part[2u * w] = sdy[0];
    part[2u * w + 1u] = sdyx[0];
  }
}`,
    }) as unknown as Kernel);
}

// part: (C, P, 2) → dbias = Σ dy, dweight = Σ dy·x̂: (C). Compensated across parts.
function backwardFinalizeKernel(): Kernel {
  return cache("bwd_finalize", () =>
    defineKernel({
      name: "batchnorm_backward_finalize",
      bindings: [
        { name: "part", access: "read" },
        { name: "dweight", access: "read_write" },
        { name: "dbias", access: "read_write" },
      ],
      uniforms: { c: "u32", parts: "u32" },
      workgroupSize: [64],
      body: String.raw`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let ch = g.x;
  if (ch >= p.c) { return; }
  var a = vec2f(0.0);
  var comp = vec2f(0.0);
  for (var q = 0u; q < p.parts; q++) {
    let j = 2u * (ch * p.parts + q);
    let y = vec2f(part[j], part[j + 1u]) - comp;
    let s = a + y;
    comp = (s - a) - y;
    a = s;
  }
  dbias[ch] = a.x;
  dweight[ch] = a.y;
}`,
    }) as unknown as Kernel);
}

// dx: (N, C, HW). Training: dx = γ·rstd·(dy − (Σdy + x̂·Σdy·x̂)/M); eval: dx = γ·rstd·dy.
function backwardInputKernel(training: boolean): Kernel {
  return cache(`bwd_dx:${training}`, () =>
    defineKernel({
      name: `batchnorm_backward_input${training ? "" : "_eval"}`,
      bindings: [
        { name: "dy", access: "read" },
        { name: "x", access: "read" },
        { name: "mean", access: "read" },
        { name: "rstd", access: "read" },
        { name: "gamma", access: "read" },
        { name: "dweight", access: "read" },
        { name: "dbias", access: "read" },
        { name: "dx", access: "read_write" },
      ],
      uniforms: { n: "u32", c: "u32", hw: "u32", m: "u32" },
      workgroupSize: [WG],
      body: String.raw`
${ENTRY} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let ch = (i / p.hw) % p.c;
  let r = rstd[ch];
  ${
        training
          ? `let xhat = (x[i] - mean[ch]) * r;
  dx[i] = gamma[ch] * r * (dy[i] - (dbias[ch] + xhat * dweight[ch]) / f32(p.m));`
          : `dx[i] = gamma[ch] * r * dy[i];`
      }
}`,
    }) as unknown as Kernel);
}

// ---------------------------------------------------------------- launchers

const checkInput = checkNCHW;

function checkChannels(op: string, x: Tensor, what: string, t: Tensor | undefined): void {
  if (!(t instanceof Tensor)) {
    throw new TypeError(`Cannot ${op}: ${what} must be a Tensor of shape [${x.shape[1]}]`);
  }
  if (t.size !== x.shape[1]) {
    throw new RangeError(
      `Cannot ${op} input of shape [${x.shape}]: ${what} must have shape [${
        x.shape[1]
      }], current value is [${t.shape}]`,
    );
  }
}

/** Result of {@linkcode batchNorm2dForward}: the output and the statistics backward needs. */
export interface BatchNorm2dForward {
  /** (N, C, H, W). */
  y: Tensor;
  /** (C): batch mean (training) or running mean (eval). */
  mean: Tensor;
  /** (C): 1/√(var + eps) with the biased batch variance (training) or the running variance (eval). */
  rstd: Tensor;
}

/**
 * Batch-norm forward without autograd: returns the output with the saved `mean` and `rstd`. In training
 * mode the running statistics (when given) are updated in place and `state.numBatchesTracked` counts up.
 *
 * @example
 * ```ts
 * const { y, mean, rstd } = batchNorm2dForward(x, { weight, bias, runningMean, runningVar, training: true });
 * ```
 */
export function batchNorm2dForward(x: Tensor, options: BatchNorm2dOptions): BatchNorm2dForward {
  const op = "batchNorm2d";
  const [n, c, h, w] = checkInput(op, x);
  const { weight, bias, runningMean, runningVar, state } = options;
  const training = options.training ?? false;
  const eps = options.eps ?? 1e-5;
  checkChannels(op, x, "weight", weight);
  checkChannels(op, x, "bias", bias);
  const hasRunning = runningMean !== undefined || runningVar !== undefined;
  if (hasRunning || !training) {
    checkChannels(op, x, "runningMean", runningMean);
    checkChannels(op, x, "runningVar", runningVar);
  }
  const hw = h * w;
  const m = n * hw;
  const e = x.engine;
  const mean = e.empty([c], "batchnorm mean");
  const rstd = e.empty([c], "batchnorm rstd");
  if (training) {
    if (m <= 1) {
      mean.dispose();
      rstd.dispose();
      throw new RangeError(
        `Cannot ${op} in training mode: expected more than 1 value per channel, current value is ` +
          `input shape [${x.shape}] (${m} per channel)`,
      );
    }
    let momentum = options.momentum === undefined ? 0.1 : options.momentum;
    if (hasRunning) {
      if (state) state.numBatchesTracked += 1;
      if (momentum === null) {
        if (!state) {
          throw new TypeError(`Cannot ${op} with momentum null (cumulative average): a state is required`);
        }
        momentum = 1 / state.numBatchesTracked;
      }
    }
    const parts = Math.ceil(m / CHUNK);
    const part = e.empty([c, parts, 2], "batchnorm partials");
    e.run(statsKernel(), {
      bindings: [x, part],
      uniforms: { c, hw, m, chunk: CHUNK, parts },
      workgroups: grid(c * parts, 1),
      info: `[${x.shape}]→[${c},${parts},2]`,
    });
    e.run(finalizeKernel(hasRunning), {
      bindings: hasRunning ? [part, mean, rstd, runningMean!, runningVar!] : [part, mean, rstd],
      uniforms: { c, m, chunk: CHUNK, parts, eps, momentum: momentum ?? 0 },
      workgroups: grid(c, 64),
      info: `[${c},${parts},2]→[${c}]`,
    });
    part.dispose();
  } else if (c > 0) {
    e.run(runningStatsKernel(), {
      bindings: [runningMean!, runningVar!, mean, rstd],
      uniforms: { c, eps },
      workgroups: grid(c, 64),
      info: `[${c}]`,
    });
  }
  const y = e.empty(x.shape, "batchnorm");
  if (x.size > 0) {
    e.run(applyKernel(false, false), {
      bindings: [x, mean, rstd, weight, bias, y],
      uniforms: { n: x.size, c, hw, eps },
      workgroups: grid(x.size, WG),
      info: `[${x.shape}]`,
    });
  }
  return { y, mean, rstd };
}

/** Gradients returned by {@linkcode batchNorm2dBackward}. */
export interface BatchNorm2dGrads {
  /** (N, C, H, W). */
  dx: Tensor;
  /** (C): Σ dy·x̂. */
  dweight: Tensor;
  /** (C): Σ dy. */
  dbias: Tensor;
}

/**
 * Batch-norm backward from the statistics saved by {@linkcode batchNorm2dForward}. All three gradients are
 * new tensors.
 *
 * @example
 * ```ts
 * const { dx, dweight, dbias } = batchNorm2dBackward(dy, x, { weight, mean, rstd, training: true });
 * ```
 */
export function batchNorm2dBackward(
  dy: Tensor,
  x: Tensor,
  saved: { weight: Tensor; mean: Tensor; rstd: Tensor; training: boolean },
): BatchNorm2dGrads {
  const op = "batchNorm2d backward";
  const [n, c, h, w] = checkInput(op, x);
  if (dy.size !== x.size) {
    throw new RangeError(`Cannot ${op}: dy has shape [${dy.shape}], input has [${x.shape}]`);
  }
  const hw = h * w;
  const m = n * hw;
  const e = x.engine;
  const dweight = e.zeros([c], "batchnorm dweight");
  const dbias = e.zeros([c], "batchnorm dbias");
  const dx = e.empty(x.shape, "batchnorm dx");
  if (m === 0) return { dx, dweight, dbias };
  const parts = Math.ceil(m / CHUNK);
  const part = e.empty([c, parts, 2], "batchnorm backward partials");
  e.run(backwardSumsKernel(), {
    bindings: [dy, x, saved.mean, saved.rstd, part],
    uniforms: { c, hw, m, chunk: CHUNK, parts },
    workgroups: grid(c * parts, 1),
    info: `[${x.shape}]→[${c},${parts},2]`,
  });
  e.run(backwardFinalizeKernel(), {
    bindings: [part, dweight, dbias],
    uniforms: { c, parts },
    workgroups: grid(c, 64),
    info: `[${c},${parts},2]→[${c}]`,
  });
  part.dispose();
  e.run(backwardInputKernel(saved.training), {
    bindings: [dy, x, saved.mean, saved.rstd, saved.weight, dweight, dbias, dx],
    uniforms: { n: x.size, c, hw, m },
    workgroups: grid(x.size, WG),
    info: `[${x.shape}]`,
  });
  return { dx, dweight, dbias };
}

type BnOptions = Omit<BatchNorm2dOptions, "weight" | "bias">;

const batchNormOp = defineOp<[Tensor, Tensor, Tensor], BnOptions, { mean: Tensor; rstd: Tensor }>({
  name: "batchNorm2d",
  forward: ([x, weight, bias], o) => {
    const { y, mean, rstd } = batchNorm2dForward(x, { ...o, weight, bias });
    // The tape keeps its own references to what it saves; nothing to keep when nothing is recorded.
    if (!(isRecording() && [x, weight, bias].some(needsGrad))) {
      mean.dispose();
      rstd.dispose();
    }
    return { output: y, saved: { mean, rstd } };
  },
  backward: (gy, { mean, rstd }, [x, weight], o) => {
    const { dx, dweight, dbias } = batchNorm2dBackward(gy, x, {
      weight,
      mean,
      rstd,
      training: o.training ?? false,
    });
    return [dx, dweight, dbias];
  },
});

/**
 * `torch.nn.functional.batch_norm` for (N, C, H, W) inputs; differentiable in `x`, `weight` and `bias`.
 * In training mode the batch statistics normalise and the running statistics (when given) are updated in
 * place with `momentum`, using the unbiased variance; a channel with a single value throws a `RangeError`
 * as PyTorch does. The saved statistics belong to the current scope (and the tape keeps its own copy).
 *
 * @example
 * ```ts
 * const state = { numBatchesTracked: 0 };
 * const y = batchNorm2d(x, { weight, bias, runningMean, runningVar, training: true, state });
 * const z = batchNorm2d(x, { weight, bias, runningMean, runningVar }); // eval mode
 * ```
 */
export function batchNorm2d(x: Tensor, options: BatchNorm2dOptions): Tensor {
  const { weight, bias, ...rest } = options;
  return batchNormOp([x, weight, bias], rest);
}

/**
 * Eval-mode batch norm in one dispatch, optionally fused with ReLU; no autograd, no saved statistics.
 *
 * @example
 * ```ts
 * const y = batchNorm2dInference(x, { weight, bias, runningMean, runningVar, relu: true });
 * ```
 */
export function batchNorm2dInference(x: Tensor, options: BatchNorm2dInferenceOptions): Tensor {
  const op = "batchNorm2dInference";
  const [, c, h, w] = checkInput(op, x);
  const { weight, bias, runningMean, runningVar } = options;
  checkChannels(op, x, "weight", weight);
  checkChannels(op, x, "bias", bias);
  checkChannels(op, x, "runningMean", runningMean);
  checkChannels(op, x, "runningVar", runningVar);
  const e = x.engine;
  const y = e.empty(x.shape, options.relu ? "batchnorm_relu" : "batchnorm");
  if (x.size > 0) {
    e.run(applyKernel(true, options.relu ?? false), {
      bindings: [x, runningMean, runningVar, weight, bias, y],
      uniforms: { n: x.size, c, hw: h * w, eps: options.eps ?? 1e-5 },
      workgroups: grid(x.size, WG),
      info: `[${x.shape}]`,
    });
  }
  return y;
}

// ---------------------------------------------------------------- CPU references (float64 arithmetic)

/** Inputs of {@linkcode batchNorm2dCpu}; running statistics are not modified (new ones are returned). */
export interface BatchNorm2dCpuOptions {
  weight: ArrayLike<number>;
  bias: ArrayLike<number>;
  runningMean?: ArrayLike<number>;
  runningVar?: ArrayLike<number>;
  training?: boolean;
  momentum?: number;
  eps?: number;
}

/** CPU reference of {@linkcode batchNorm2dForward}, in float64 (two-pass variance). */
export function batchNorm2dCpu(
  x: Float32Array,
  shape: readonly number[],
  o: BatchNorm2dCpuOptions,
): {
  y: Float32Array;
  mean: Float64Array;
  rstd: Float64Array;
  runningMean?: Float64Array;
  runningVar?: Float64Array;
} {
  const [n, c, h, w] = shape;
  const hw = h * w, m = n * hw, eps = o.eps ?? 1e-5, momentum = o.momentum ?? 0.1;
  const mean = new Float64Array(c), rstd = new Float64Array(c);
  let runningMean: Float64Array | undefined, runningVar: Float64Array | undefined;
  if (o.training) {
    if (m <= 1) throw new RangeError(`Cannot batchNorm2d in training mode: 1 value per channel`);
    const variance = new Float64Array(c);
    for (let ch = 0; ch < c; ch++) {
      let s = 0;
      for (let b = 0; b < n; b++) for (let k = 0; k < hw; k++) s += x[(b * c + ch) * hw + k];
      const mu = s / m;
      let q = 0;
      for (let b = 0; b < n; b++) for (let k = 0; k < hw; k++) q += (x[(b * c + ch) * hw + k] - mu) ** 2;
      mean[ch] = mu;
      variance[ch] = q / m;
      rstd[ch] = 1 / Math.sqrt(q / m + eps);
    }
    if (o.runningMean && o.runningVar) {
      runningMean = Float64Array.from(o.runningMean, (r, ch) => (1 - momentum) * r + momentum * mean[ch]);
      runningVar = Float64Array.from(
        o.runningVar,
        (r, ch) => (1 - momentum) * r + momentum * variance[ch] * m / (m - 1),
      );
    }
  } else {
    for (let ch = 0; ch < c; ch++) {
      mean[ch] = o.runningMean![ch];
      rstd[ch] = 1 / Math.sqrt(o.runningVar![ch] + eps);
    }
  }
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const ch = Math.floor(i / hw) % c;
    y[i] = (x[i] - mean[ch]) * rstd[ch] * o.weight[ch] + o.bias[ch];
  }
  return { y, mean, rstd, runningMean, runningVar };
}

/** CPU reference of {@linkcode batchNorm2dBackward}, in float64. */
export function batchNorm2dBackwardCpu(
  dy: Float32Array,
  x: Float32Array,
  shape: readonly number[],
  saved: { weight: ArrayLike<number>; mean: ArrayLike<number>; rstd: ArrayLike<number>; training: boolean },
): { dx: Float32Array; dweight: Float32Array; dbias: Float32Array } {
  const [n, c, h, w] = shape;
  const hw = h * w, m = n * hw;
  const db = new Float64Array(c), dw = new Float64Array(c);
  for (let i = 0; i < x.length; i++) {
    const ch = Math.floor(i / hw) % c;
    db[ch] += dy[i];
    dw[ch] += dy[i] * (x[i] - saved.mean[ch]) * saved.rstd[ch];
  }
  const dx = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const ch = Math.floor(i / hw) % c;
    const r = saved.rstd[ch], xhat = (x[i] - saved.mean[ch]) * r;
    dx[i] = saved.training
      ? saved.weight[ch] * r / m * (m * dy[i] - db[ch] - xhat * dw[ch])
      : saved.weight[ch] * r * dy[i];
  }
  return { dx, dweight: Float32Array.from(dw), dbias: Float32Array.from(db) };
}
