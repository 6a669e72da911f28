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
 * A batch larger than one storage binding runs as several runs of whole samples (kernels/_ranges.ts): each
 * run writes its own columns of the partials, and the finalize pass merges them with each run's counts.
 * The differentiable `batchNorm2d` (autograd) is in ops/batchnorm.ts.
 *
 * @module
 */
import { checkNCHW } from "./check.ts";
import { grid } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { kahanAdd, LINEAR_ID, linearEntry, treeReduce, wgsl, WORKGROUP_ID, workgroupEntry } from "./_wgsl.ts";
import { bindElements, rowRuns } from "./_ranges.ts";

/** Host-side state of one batch-norm layer: PyTorch's `num_batches_tracked`. */
export interface BatchNormState {
  /** Training forward passes seen (state_dict key `num_batches_tracked`). */
  numBatchesTracked: number;
}

/** Options of {@linkcode batchNorm2dForward} (and of the differentiable `batchNorm2d` in ops/). */
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

/** Uniforms of the two per-channel partial-sum passes (statistics, backward sums). */
const CHANNEL_PARTS = {
  c: "u32",
  hw: "u32",
  m: "u32",
  chunk: "u32",
  parts: "u32",
  off: "u32",
  qbase: "u32",
  ptotal: "u32",
} as const;

// Every kernel over x sees one run of whole samples (kernels/_ranges.ts): x[off + j] is value j of the run,
// so the channel of j is (j / HW) % C; a tensor that fits one binding is one run with off = 0.

// x: (n, C, HW) → part: (C, P, 2) = (mean, M2) of values [q·chunk, (q+1)·chunk) of channel c within the
// run, where value k of a channel is x[off + ((k / HW)·C + c)·HW + k % HW]. Workgroup w = c·parts + q; each
// thread runs Welford over its strided values, then the workgroup merges (n, mean, M2) triples pairwise.
// The run's parts go to columns qbase.. of the (C, ptotal, 2) partials of all runs.
const statsKernel = single("batchnorm_stats", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "part", access: "read_write" }],
  uniforms: CHANNEL_PARTS,
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sn: array<f32, ${WG}>;
var<workgroup> smean: array<f32, ${WG}>;
var<workgroup> sm2: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.c * p.parts) { return; }   // uniform per workgroup
  let ch = w / p.parts;
  let q = w % p.parts;
  let start = q * p.chunk;
  let end = min(start + p.chunk, p.m);
  var n = 0.0;
  var mean = 0.0;
  var m2 = 0.0;
  for (var k = start + t; k < end; k += ${WG}u) {
    let v = x[p.off + ((k / p.hw) * p.c + ch) * p.hw + k % p.hw];
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
    let j = 2u * (ch * p.ptotal + p.qbase + q);
    part[j] = smean[0];
    part[j + 1u] = sm2[0];
  }
}`,
}));

// part: (C, P, 2) → mean, rstd: (C); with `update`, running_mean / running_var (C) are blended in place:
// r ← (1 − momentum)·r + momentum·batch, with the unbiased variance M2 / (M − 1). Part q belongs to run
// q / prun; every run but the last holds mrun values per channel (one run: prun = P, mrun = M).
const finalizeKernel = variants("batchnorm_finalize", (p: { update: boolean }) => ({
  bindings: [
    { name: "part", access: "read" },
    { name: "mean", access: "read_write" },
    { name: "rstd", access: "read_write" },
    ...(p.update
      ? [{ name: "rmean", access: "read_write" }, { name: "rvar", access: "read_write" }] as const
      : []),
  ],
  uniforms: {
    c: "u32",
    m: "u32",
    chunk: "u32",
    parts: "u32",
    mrun: "u32",
    prun: "u32",
    eps: "f32",
    momentum: "f32",
  },
  workgroupSize: [64],
  body: wgsl`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let ch = g.x;
  if (ch >= p.c) { return; }
  var n = 0.0;
  var mu = 0.0;
  var m2 = 0.0;
  for (var q = 0u; q < p.parts; q++) {
    let mr = min(p.mrun, p.m - (q / p.prun) * p.mrun);
    let nb = f32(min(p.chunk, mr - (q % p.prun) * p.chunk));
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
#if ${p.update}
  // NOTE: PyTorch's running_var is unbiased (M − 1); the normalisation above is not.
  rmean[ch] = (1.0 - p.momentum) * rmean[ch] + p.momentum * mu;
  rvar[ch] = (1.0 - p.momentum) * rvar[ch] + p.momentum * (m2 / (f32(p.m) - 1.0));
#endif
}`,
}));

// running_mean, running_var: (C) → mean, rstd: (C) for eval mode.
const runningStatsKernel = single("batchnorm_running_stats", () => ({
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
}));

// y = (x − mean[c])·rstd[c]·γ[c] + β[c] (then max(·, 0) with `relu`), x, y: (n, C, HW), n elements of one run.
// With `running` the second statistic is a variance and rstd = 1/√(var + eps) (fused eval path).
const applyKernel = variants("batchnorm_apply", (p: { running: boolean; relu: boolean }) => ({
  bindings: [
    { name: "x", access: "read" },
    { name: "mean", access: "read" },
    { name: p.running ? "rvar" : "rstd", access: "read" },
    { name: "gamma", access: "read" },
    { name: "beta", access: "read" },
    { name: "y", access: "read_write" },
  ],
  uniforms: { n: "u32", c: "u32", hw: "u32", eps: "f32", off: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let ch = (i / p.hw) % p.c;
#if ${p.running}
  let inv = 1.0 / sqrt(rvar[ch] + p.eps);
#else
  let inv = rstd[ch];
#endif
  let v = (x[p.off + i] - mean[ch]) * inv * gamma[ch] + beta[ch];
#if ${p.relu}
  y[p.off + i] = max(v, 0.0);
#else
  y[p.off + i] = v;
#endif
}`,
}));

// dy, x: (n, C, HW) → part: (C, P, 2) = (Σ dy, Σ dy·x̂) over values [q·chunk, (q+1)·chunk) of channel c
// within the run (indexed as in batchnorm_stats), into columns qbase.. of the partials of all runs.
const backwardSumsKernel = single("batchnorm_backward_sums", () => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "x", access: "read" },
    { name: "mean", access: "read" },
    { name: "rstd", access: "read" },
    { name: "part", access: "read_write" },
  ],
  uniforms: CHANNEL_PARTS,
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sh: array<vec2f, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.c * p.parts) { return; }   // uniform per workgroup
  let ch = w / p.parts;
  let q = w % p.parts;
  let start = q * p.chunk;
  let end = min(start + p.chunk, p.m);
  let mu = mean[ch];
  let r = rstd[ch];
  var a = 0.0;
  var b = 0.0;
  for (var k = start + t; k < end; k += ${WG}u) {
    let j = p.off + ((k / p.hw) * p.c + ch) * p.hw + k % p.hw;
    let g = dy[j];
    a += g;
    b += g * (x[j] - mu) * r;
  }
  sh[t] = vec2f(a, b);
  ${treeReduce("sh", WG, (u, v) => `${u} + ${v}`)}
  if (t == 0u) {
    let j = 2u * (ch * p.ptotal + p.qbase + q);
    part[j] = sh[0].x;
    part[j + 1u] = sh[0].y;
  }
}`,
}));

// part: (C, P, 2) → dbias = Σ dy, dweight = Σ dy·x̂: (C). Compensated across parts.
const backwardFinalizeKernel = single("batchnorm_backward_finalize", () => ({
  bindings: [
    { name: "part", access: "read" },
    { name: "dweight", access: "read_write" },
    { name: "dbias", access: "read_write" },
  ],
  uniforms: { c: "u32", parts: "u32" },
  workgroupSize: [64],
  body: wgsl`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  let ch = g.x;
  if (ch >= p.c) { return; }
  var a = vec2f(0.0);
  var comp = vec2f(0.0);
  for (var q = 0u; q < p.parts; q++) {
    let j = 2u * (ch * p.parts + q);
    ${kahanAdd("a", "comp", "vec2f(part[j], part[j + 1u])")}
  }
  dbias[ch] = a.x;
  dweight[ch] = a.y;
}`,
}));

// dx: (n, C, HW), n elements of one run. Training: dx = γ·rstd·(dy − (Σdy + x̂·Σdy·x̂)/M); eval: γ·rstd·dy.
const backwardInputKernel = variants("batchnorm_backward_input", (p: { eval: boolean }) => ({
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
  uniforms: { n: "u32", c: "u32", hw: "u32", m: "u32", off: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let ch = (i / p.hw) % p.c;
  let r = rstd[ch];
  let j = p.off + i;
#if ${p.eval}
  dx[j] = gamma[ch] * r * dy[j];
#else
  let xhat = (x[j] - mean[ch]) * r;
  dx[j] = gamma[ch] * r * (dy[j] - (dbias[ch] + xhat * dweight[ch]) / f32(p.m));
#endif
}`,
}));

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
 * Runs of whole samples that fit one storage binding, and the per-channel partials of the statistics
 * passes: run r writes `parts[r]` columns from `qbase[r]`; every run but the last holds `mrun` values per
 * channel in `prun` parts.
 */
function sampleRuns(op: string, x: Tensor) {
  const [n, c, h, w] = x.shape;
  const hw = h * w;
  const runs = rowRuns(x.engine, op, n, [c * hw], "sample").map((r) => {
    const m = r.count * hw;
    return { ...r, m, parts: Math.ceil(m / CHUNK), qbase: 0 };
  });
  let q = 0;
  for (const r of runs) {
    r.qbase = q;
    q += r.parts;
  }
  return { runs, sample: c * hw, mrun: runs[0].m, prun: runs[0].parts, ptotal: q };
}

/**
 * Batch-norm forward without autograd: returns the output with the saved `mean` and `rstd`. In training
 * mode the running statistics (when given) are updated in place and `state.numBatchesTracked` counts up.
 * A batch larger than one storage binding runs as several runs of whole samples.
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
  if (training && m <= 1) {
    throw new RangeError(
      `Cannot ${op} in training mode: expected more than 1 value per channel, current value is ` +
        `input shape [${x.shape}] (${m} per channel)`,
    );
  }
  const { runs, sample, mrun, prun, ptotal } = sampleRuns(op, x);
  const mean = e.empty([c], "batchnorm mean");
  const rstd = e.empty([c], "batchnorm rstd");
  if (training) {
    let momentum = options.momentum === undefined ? 0.1 : options.momentum;
    if (hasRunning) {
      if (state) state.numBatchesTracked += 1;
      if (momentum === null) {
        if (!state) {
          mean.dispose();
          rstd.dispose();
          throw new TypeError(`Cannot ${op} with momentum null (cumulative average): a state is required`);
        }
        momentum = 1 / state.numBatchesTracked;
      }
    }
    const part = e.empty([c, ptotal, 2], "batchnorm partials");
    for (const r of runs) {
      const { binding, off } = bindElements(x, r.start * sample, r.count * sample);
      e.run(statsKernel(), {
        bindings: [binding, part],
        uniforms: { c, hw, m: r.m, chunk: CHUNK, parts: r.parts, off, qbase: r.qbase, ptotal },
        workgroups: grid(c * r.parts, 1),
        info: `[${x.shape}] n ${r.start}+${r.count}→[${c},${ptotal},2]`,
      });
    }
    e.run(finalizeKernel({ update: hasRunning }), {
      bindings: hasRunning ? [part, mean, rstd, runningMean!, runningVar!] : [part, mean, rstd],
      uniforms: { c, m, chunk: CHUNK, parts: ptotal, mrun, prun, eps, momentum: momentum ?? 0 },
      workgroups: grid(c, 64),
      info: `[${c},${ptotal},2]→[${c}]`,
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
  for (const r of runs) {
    const size = r.count * sample;
    if (size === 0) continue;
    const bx = bindElements(x, r.start * sample, size);
    e.run(applyKernel({ running: false, relu: false }), {
      bindings: [bx.binding, mean, rstd, weight, bias, bindElements(y, r.start * sample, size).binding],
      uniforms: { n: size, c, hw, eps, off: bx.off },
      workgroups: grid(size, WG),
      info: `[${x.shape}] n ${r.start}+${r.count}`,
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
 * new tensors. A batch larger than one storage binding runs as several runs of whole samples.
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
  const { runs, sample, ptotal } = sampleRuns(op, x);
  const dweight = e.zeros([c], "batchnorm dweight");
  const dbias = e.zeros([c], "batchnorm dbias");
  const dx = e.empty(x.shape, "batchnorm dx");
  if (m === 0) return { dx, dweight, dbias };
  const part = e.empty([c, ptotal, 2], "batchnorm backward partials");
  for (const r of runs) {
    const bx = bindElements(x, r.start * sample, r.count * sample);
    const bdy = bindElements(dy, r.start * sample, r.count * sample);
    e.run(backwardSumsKernel(), {
      bindings: [bdy.binding, bx.binding, saved.mean, saved.rstd, part],
      uniforms: { c, hw, m: r.m, chunk: CHUNK, parts: r.parts, off: bx.off, qbase: r.qbase, ptotal },
      workgroups: grid(c * r.parts, 1),
      info: `[${x.shape}] n ${r.start}+${r.count}→[${c},${ptotal},2]`,
    });
  }
  e.run(backwardFinalizeKernel(), {
    bindings: [part, dweight, dbias],
    uniforms: { c, parts: ptotal },
    workgroups: grid(c, 64),
    info: `[${c},${ptotal},2]→[${c}]`,
  });
  part.dispose();
  for (const r of runs) {
    const size = r.count * sample;
    if (size === 0) continue;
    const bx = bindElements(x, r.start * sample, size);
    e.run(backwardInputKernel({ eval: !saved.training }), {
      bindings: [
        bindElements(dy, r.start * sample, size).binding,
        bx.binding,
        saved.mean,
        saved.rstd,
        saved.weight,
        dweight,
        dbias,
        bindElements(dx, r.start * sample, size).binding,
      ],
      uniforms: { n: size, c, hw, m, off: bx.off },
      workgroups: grid(size, WG),
      info: `[${x.shape}] n ${r.start}+${r.count}`,
    });
  }
  return { dx, dweight, dbias };
}

/**
 * Eval-mode batch norm in one dispatch (one per run of samples when the batch exceeds one storage
 * binding), optionally fused with ReLU; no autograd, no saved statistics.
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
  const relu = options.relu ?? false;
  const y = e.empty(x.shape, relu ? "batchnorm_relu" : "batchnorm");
  const { runs, sample } = sampleRuns(op, x);
  for (const r of runs) {
    const size = r.count * sample;
    if (size === 0) continue;
    const bx = bindElements(x, r.start * sample, size);
    e.run(applyKernel({ running: true, relu }), {
      bindings: [
        bx.binding,
        runningMean,
        runningVar,
        weight,
        bias,
        bindElements(y, r.start * sample, size).binding,
      ],
      uniforms: { n: size, c, hw: h * w, eps: options.eps ?? 1e-5, off: bx.off },
      workgroups: grid(size, WG),
      info: `[${x.shape}] n ${r.start}+${r.count}`,
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
