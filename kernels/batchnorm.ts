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
 * Per-channel statistics take two passes: partial Welford triples over chunks of each channel's values,
 * then one thread per channel merges the parts (Chan et al.'s pairwise update). Backward's sums (Σdy,
 * Σdy·x̂) use the same split. The partial-sum passes have two strategies, chosen per call through the
 * tuning table (kernels/tuning.ts; ops `batchnorm.stats`, `batchnorm.sums`, shape class
 * {@linkcode batchNormShapeClass}):
 *
 * - `tree`: workgroup (c, part) of 256 invocations reduces 4096 values through workgroup memory, with
 *   barriers. The default on GPUs.
 * - `subgroup`: the same workgroups, reduced with subgroup operations (a butterfly of Welford merges for the
 *   statistics, `subgroupAdd` for the sums), one value per subgroup through workgroup memory per level
 *   (`subgroupReduce`, kernels/_wgsl.ts). Only where the device has `subgroups` (Chrome); elsewhere a
 *   table's `subgroup` gives way to the default and a forced one throws.
 * - `serial/<chunk>`: one invocation per (c, part), no workgroup memory and no barriers, walking its chunk
 *   sample by sample, with vec4 loads when the layout allows.
 * - `serial/<chunk>/tex`: the same with x (and dy) read from flat textures (engine/flat.ts)
 *   where the tensor is one binding and H·W % 4 = 0, else as `serial/<chunk>`; the same bits. The default
 *   on software adapters (`serial/2048/tex`; llvmpipe, where each invocation-varying storage load is a
 *   per-lane loop, a texel fetch one gather, and each barrier switches coroutines): 4–5× faster there.
 *
 * The elementwise passes (`batchnorm.apply`: y from x; `batchnorm.dx`: dx) have a `scalar` variant (one
 * value per invocation, the default on GPUs), a `vec4` one (four values of one channel per invocation,
 * where H·W and the binding offsets are multiples of 4, else scalar; bitwise the same results) and a `tex`
 * one (vec4 with x and dy read through flat textures and the per-channel values from one small texture,
 * where the tensor fits one binding and a texture; one value per invocation where H·W % 4 ≠ 0 and the size
 * is a multiple of 4; the same bits again; the default on software adapters, 3–4× faster than vec4 there). All outputs and gradients are new tensors (overwrite); nothing accumulates
 * (`+=`), except the running statistics, which are updated in place.
 *
 * A batch larger than one storage binding runs as several runs of whole samples (kernels/_ranges.ts): each
 * run writes its own columns of the partials, and the finalize pass merges them with each run's counts.
 * The differentiable `batchNorm2d` (autograd) is in ops/batchnorm.ts.
 *
 * @module
 */
import { checkNCHW } from "./check.ts";
import { type Engine, type EngineTexture, grid } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import {
  hasSubgroups,
  kahanAdd,
  LINEAR_ID,
  linearEntry,
  NO_SUBGROUPS,
  subgroupReduce,
  treeReduce,
  wgsl,
  WORKGROUP_ID,
  workgroupEntry,
  workgroupEntrySubgroups,
} from "./_wgsl.ts";
import { bindElements, rowRuns } from "./_ranges.ts";
import { chosenVariant, tuningKey, tuningOf } from "./tuning.ts";
import { FLAT_WIDTH, flatLoad, flatTexel, flatTexture } from "../engine/flat.ts";

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
/** Values of one channel that one workgroup of the `tree` partial-sum passes reduces. */
const CHUNK = 4096;
/** Invocations per workgroup of the `serial` partial-sum passes (each works alone). */
const SERIAL_WG = 64;

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
const statsKernel = variants("batchnorm_stats", (p: { sg: boolean }) => ({
  bindings: [{ name: "x", access: "read" }, { name: "part", access: "read_write" }],
  uniforms: CHANNEL_PARTS,
  workgroupSize: [WG],
  subgroups: p.sg,
  body: wgsl`
#if ${p.sg}
var<workgroup> sh: array<vec3f, ${WG}>;
// Chan et al.'s merge of two (n, mean, M2) triples, as the tree below merges them.
fn welford(a: vec3f, b: vec3f) -> vec3f {
  if (b.x == 0.0) { return a; }
  if (a.x == 0.0) { return b; }
  let nn = a.x + b.x;
  let d = b.y - a.y;
  let f = b.x / nn;
  return vec3f(nn, a.y + d * f, a.z + b.z + d * d * a.x * f);
}
// The subgroup's triples merged in a butterfly: every invocation ends with the whole subgroup's.
fn subgroupWelford(x: vec3f, sgs: u32) -> vec3f {
  var v = x;
  for (var s = 1u; s < sgs; s <<= 1u) { v = welford(v, subgroupShuffleXor(v, s)); }
  return v;
}
${workgroupEntrySubgroups(WG)} {
#else
var<workgroup> sn: array<f32, ${WG}>;
var<workgroup> smean: array<f32, ${WG}>;
var<workgroup> sm2: array<f32, ${WG}>;
${workgroupEntry(WG)} {
#endif
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
#if ${p.sg}
  var v = vec3f(n, mean, m2);
  ${subgroupReduce("sh", WG, (x) => `subgroupWelford(${x}, sgs)`, "vec3f(0.0)")}
  if (t == 0u) {
    let j = 2u * (ch * p.ptotal + p.qbase + q);
    part[j] = sh[0].y;
    part[j + 1u] = sh[0].z;
  }
#else
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
#endif
}`,
}));

/**
 * WGSL of the `serial` partial-sum passes (under {@linkcode linearEntry}): invocation i = c·parts + q of
 * one run owns values [start, end) = [q·chunk, min((q+1)·chunk, m)) of channel `ch`.
 */
/**
 * WGSL `fn name(i: u32) -> vec4f`: vec4 `i` of the storage binding `buf`, or with `tex` texel i of the flat
 * texture `T` (engine/flat.ts); empty for scalar kernels.
 */
const vecLoad = (name: string, buf: string, T: string, p: { vec4: boolean; tex?: boolean }) =>
  p.tex
    ? `fn ${name}(i: u32) -> vec4f { return ${flatTexel(T, "i")}; }`
    : p.vec4
    ? `fn ${name}(i: u32) -> vec4f { return ${buf}[i]; }`
    : "";

const SERIAL_CHUNK = `if (i >= p.c * p.parts) { return; }
  let ch = i / p.parts;
  let q = i % p.parts;
  let start = q * p.chunk;
  let end = min(start + p.chunk, p.m);`;

/** Steps of one block of {@linkcode serialWalk}'s blocked form. */
const SERIAL_BLOCK = 16;

/**
 * WGSL that walks the chunk of {@linkcode SERIAL_CHUNK} sample by sample, each sample's part a contiguous
 * run of x (no division per value), running `body` with `at`, the index of the current value, or of the
 * current vec4 with `vec4` (then H·W, off and chunk are multiples of 4). With `block`, the steps of each
 * sample go in blocks of {@linkcode SERIAL_BLOCK}, `block.open` before and `block.close` after each: sums
 * in two levels (a block's partial sum, then the sum of those), whose float32 error grows with
 * 16 + steps/16 rather than with the steps.
 */
const serialWalk = (vec4: boolean, body: string, block?: { open: string; close: string }) => {
  const at = `let at = base${vec4 ? " / 4u" : ""} + j;`;
  const steps = `let steps = len${vec4 ? " / 4u" : ""};`;
  const loop = block
    ? `for (var j0 = 0u; j0 < steps; j0 += ${SERIAL_BLOCK}u) {
      ${block.open}
      for (var j = j0; j < min(j0 + ${SERIAL_BLOCK}u, steps); j++) {
        ${at}
        ${body}
      }
      ${block.close}
    }`
    : `for (var j = 0u; j < steps; j++) {
      ${at}
      ${body}
    }`;
  return `var b = start / p.hw;      // sample of value k
  var s = start - b * p.hw;  // its position in the sample
  var k = start;
  loop {
    if (k >= end) { break; }
    let len = min(p.hw - s, end - k);
    let base = p.off + (b * p.c + ch) * p.hw + s;
    ${steps}
    ${loop}
    k += len;
    b += 1u;
    s = 0u;
  }`;
};

// x: (n, C, HW) → part: (C, P, 2) as batchnorm_stats, one invocation per (c, q) without workgroup memory
// (serialWalk). Welford over the chunk's values shifted by its first value (the shifted mean is of the
// order of the spread, so its rounding does not grow with the mean: values around 50 keep their variance);
// with `vec4` four streams of equal count over the vec4's lanes (one division per vec4), merged pairwise at
// the end with Chan et al.'s M2 = M2a + M2b + d²·na·nb/(na + nb).
const statsSerialKernel = variants("batchnorm_stats_serial", (p: { vec4: boolean; tex?: boolean }) => {
  const t = p.vec4 ? "vec4f" : "f32";
  return {
    bindings: [
      p.tex
        ? { name: "X", access: "read", texture: "sampled" }
        : { name: "x", access: "read", type: p.vec4 ? "vec4<f32>" : "f32" },
      { name: "part", access: "read_write" },
    ] as const,
    uniforms: CHANNEL_PARTS,
    workgroupSize: [SERIAL_WG],
    body: wgsl`
${vecLoad("ldx", "x", "X", p)}
${linearEntry(SERIAL_WG)} {
  ${LINEAR_ID}
  ${SERIAL_CHUNK}
  let first = p.off + ((start / p.hw) * p.c + ch) * p.hw + start % p.hw;
#if ${p.vec4}
  let shift = ldx(first / 4u).x;
#else
  let shift = x[first];
#endif
  var n = 0.0;
  var mean = ${t}(0.0);
  var m2 = ${t}(0.0);
  ${
      serialWalk(
        p.vec4,
        `let v = ${p.vec4 ? "ldx(at)" : "x[at]"} - shift;
      n += 1.0;
      let d = v - mean;
      mean += d ${p.vec4 ? "* (1.0 / n)" : "/ n"};
      m2 += d * (v - mean);`,
      )
    }
#if ${p.vec4}
  // Lanes (x, y) and (z, w) hold n values each, then the two pairs 2n each.
  let d1 = mean.y - mean.x;
  let d2 = mean.w - mean.z;
  let ma = mean.x + 0.5 * d1;
  let mb = mean.z + 0.5 * d2;
  let m2a = m2.x + m2.y + d1 * d1 * (0.5 * n);
  let m2b = m2.z + m2.w + d2 * d2 * (0.5 * n);
  let d = mb - ma;
  let mu = ma + 0.5 * d;
  let sq = m2a + m2b + d * d * n;
#else
  let mu = mean;
  let sq = m2;
#endif
  let j = 2u * (ch * p.ptotal + p.qbase + q);
  part[j] = shift + mu;
  part[j + 1u] = sq;
}`,
  };
});

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
  // The parts' means relative to the first one's: merging many parts then rounds at the scale of their
  // spread, not of the mean (values around 50 in hundreds of parts).
  let shift = part[2u * ch * p.parts];
  var n = 0.0;
  var mu = 0.0;
  var m2 = 0.0;
  for (var q = 0u; q < p.parts; q++) {
    let mr = min(p.mrun, p.m - (q / p.prun) * p.mrun);
    let nb = f32(min(p.chunk, mr - (q % p.prun) * p.chunk));
    let j = 2u * (ch * p.parts + q);
    let nn = n + nb;
    let d = (part[j] - shift) - mu;
    let f = nb / nn;
    mu += d * f;
    m2 += part[j + 1u] + d * d * n * f;
    n = nn;
  }
  mean[ch] = shift + mu;
  rstd[ch] = 1.0 / sqrt(m2 / f32(p.m) + p.eps);
#if ${p.update}
  // NOTE: PyTorch's running_var is unbiased (M − 1); the normalisation above is not.
  rmean[ch] = (1.0 - p.momentum) * rmean[ch] + p.momentum * (shift + mu);
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
// With `running` the second statistic is a variance and rstd = 1/√(var + eps) (fused eval path). With `vec4`
// each invocation does four consecutive values of one channel (HW, n and off multiples of 4), with the same
// operations in the same order per value: the results equal the scalar kernel's bit for bit.
const applyKernel = variants("batchnorm_apply", (p: { running: boolean; relu: boolean; vec4: boolean }) => ({
  bindings: [
    { name: "x", access: "read", type: p.vec4 ? "vec4<f32>" : "f32" },
    { name: "mean", access: "read" },
    { name: p.running ? "rvar" : "rstd", access: "read" },
    { name: "gamma", access: "read" },
    { name: "beta", access: "read" },
    { name: "y", access: "read_write", type: p.vec4 ? "vec4<f32>" : "f32" },
  ],
  uniforms: { n: "u32", c: "u32", hw: "u32", eps: "f32", off: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
#if ${p.vec4}
  if (i >= p.n / 4u) { return; }
  let ch = (4u * i / p.hw) % p.c;
  let j = p.off / 4u + i;
#else
  if (i >= p.n) { return; }
  let ch = (i / p.hw) % p.c;
  let j = p.off + i;
#endif
#if ${p.running}
  let inv = 1.0 / sqrt(rvar[ch] + p.eps);
#else
  let inv = rstd[ch];
#endif
  let v = (x[j] - mean[ch]) * inv * gamma[ch] + beta[ch];
#if ${p.relu}
  y[j] = max(v, ${p.vec4 ? "vec4f" : "f32"}(0.0));
#else
  y[j] = v;
#endif
}`,
}));

// dy, x: (n, C, HW) → part: (C, P, 2) = (Σ dy, Σ dy·x̂) over values [q·chunk, (q+1)·chunk) of channel c
// within the run (indexed as in batchnorm_stats), into columns qbase.. of the partials of all runs.
const backwardSumsKernel = variants("batchnorm_backward_sums", (p: { sg: boolean }) => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "x", access: "read" },
    { name: "mean", access: "read" },
    { name: "rstd", access: "read" },
    { name: "part", access: "read_write" },
  ],
  uniforms: CHANNEL_PARTS,
  workgroupSize: [WG],
  subgroups: p.sg,
  body: wgsl`
var<workgroup> sh: array<vec2f, ${WG}>;
${p.sg ? workgroupEntrySubgroups(WG) : workgroupEntry(WG)} {
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
#if ${p.sg}
  var v = vec2f(a, b);
  ${subgroupReduce("sh", WG, (x) => `subgroupAdd(${x})`, "vec2f(0.0)")}
#else
  sh[t] = vec2f(a, b);
  ${treeReduce("sh", WG, (u, v) => `${u} + ${v}`)}
#endif
  if (t == 0u) {
    let j = 2u * (ch * p.ptotal + p.qbase + q);
    part[j] = sh[0].x;
    part[j + 1u] = sh[0].y;
  }
}`,
}));

// dy, x: (n, C, HW) → part as batchnorm_backward_sums, one invocation per (c, q) without workgroup memory
// (serialWalk): Σ dy and Σ dy·(x − mean) per lane in two levels (blocks, then their sum), times rstd at
// the end. NOTE: not Kahan: llvmpipe's compiler folds its compensation ((a + y) − a) − y to 0.
const backwardSumsSerialKernel = variants(
  "batchnorm_backward_sums_serial",
  (p: { vec4: boolean; tex?: boolean }) => {
    const t = p.vec4 ? "vec4f" : "f32";
    return {
      bindings: [
        p.tex
          ? { name: "DY", access: "read", texture: "sampled" }
          : { name: "dy", access: "read", type: p.vec4 ? "vec4<f32>" : "f32" },
        p.tex
          ? { name: "X", access: "read", texture: "sampled" }
          : { name: "x", access: "read", type: p.vec4 ? "vec4<f32>" : "f32" },
        { name: "mean", access: "read" },
        { name: "rstd", access: "read" },
        { name: "part", access: "read_write" },
      ] as const,
      uniforms: CHANNEL_PARTS,
      workgroupSize: [SERIAL_WG],
      body: wgsl`
${vecLoad("ldx", "x", "X", p)}
${vecLoad("ldy", "dy", "DY", p)}
${linearEntry(SERIAL_WG)} {
  ${LINEAR_ID}
  ${SERIAL_CHUNK}
  let mu = mean[ch];
  var a = ${t}(0.0);
  var bs = ${t}(0.0);
  ${
        serialWalk(
          p.vec4,
          `let g = ${p.vec4 ? "ldy(at)" : "dy[at]"};
        ia += g;
        ib += g * (${p.vec4 ? "ldx(at)" : "x[at]"} - mu);`,
          {
            open: `var ia = ${t}(0.0);
      var ib = ${t}(0.0);`,
            close: `a += ia;
      bs += ib;`,
          },
        )
      }
  let j = 2u * (ch * p.ptotal + p.qbase + q);
#if ${p.vec4}
  part[j] = (a.x + a.y) + (a.z + a.w);
  part[j + 1u] = ((bs.x + bs.y) + (bs.z + bs.w)) * rstd[ch];
#else
  part[j] = a;
  part[j + 1u] = bs * rstd[ch];
#endif
}`,
    };
  },
);

// part: (C, P, 2) → dbias = Σ dy, dweight = Σ dy·x̂: (C). Across parts in two levels (blocks of 16 parts,
// then their compensated sum): Kahan alone is not enough where the compiler folds its compensation
// (llvmpipe), and hundreds of parts (large batches) would otherwise sum one by one.
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
  for (var q0 = 0u; q0 < p.parts; q0 += 16u) {
    var blk = vec2f(0.0);
    for (var q = q0; q < min(q0 + 16u, p.parts); q++) {
      let j = 2u * (ch * p.parts + q);
      blk += vec2f(part[j], part[j + 1u]);
    }
    ${kahanAdd("a", "comp", "blk")}
  }
  dbias[ch] = a.x;
  dweight[ch] = a.y;
}`,
}));

// dx: (n, C, HW), n elements of one run. Training: dx = γ·rstd·(dy − (Σdy + x̂·Σdy·x̂)/M); eval: γ·rstd·dy.
// With `vec4`, four consecutive values of one channel per invocation, bit for bit as the scalar kernel.
const backwardInputKernel = variants("batchnorm_backward_input", (p: { eval: boolean; vec4: boolean }) => ({
  bindings: [
    { name: "dy", access: "read", type: p.vec4 ? "vec4<f32>" : "f32" },
    { name: "x", access: "read", type: p.vec4 ? "vec4<f32>" : "f32" },
    { name: "mean", access: "read" },
    { name: "rstd", access: "read" },
    { name: "gamma", access: "read" },
    { name: "dweight", access: "read" },
    { name: "dbias", access: "read" },
    { name: "dx", access: "read_write", type: p.vec4 ? "vec4<f32>" : "f32" },
  ],
  uniforms: { n: "u32", c: "u32", hw: "u32", m: "u32", off: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
#if ${p.vec4}
  if (i >= p.n / 4u) { return; }
  let ch = (4u * i / p.hw) % p.c;
  let j = p.off / 4u + i;
#else
  if (i >= p.n) { return; }
  let ch = (i / p.hw) % p.c;
  let j = p.off + i;
#endif
  let r = rstd[ch];
#if ${p.eval}
  dx[j] = gamma[ch] * r * dy[j];
#else
  let xhat = (x[j] - mean[ch]) * r;
  dx[j] = gamma[ch] * r * (dy[j] - (dbias[ch] + xhat * dweight[ch]) / f32(p.m));
#endif
}`,
}));

// The elementwise passes with x (and dy) read through flat textures (`tex`; engine/flat.ts: the whole
// tensor copied, no kernel) and the per-channel values packed into one texture, so that each invocation
// fetches two or three texels where the vec4 kernels make five to seven storage loads — each a loop over the
// SIMD lanes on llvmpipe (Mesa 22's lp_bld_nir_soa) where a texel fetch is one gather. The same operations
// in the same order: the same bits as vec4. Invocation (x, y) of the dispatch takes texel (x, y), vec4
// j = y · FLAT_WIDTH + x of the tensor.

// Per-channel texels: row 0 = (mean, rstd or running variance, γ, β) for apply; for dx (mean, rstd, γ,
// Σdy·x̂) and row 1 = (Σdy, 0, 0, 0). P: c × 2 texels
const channelTexKernel = single("batchnorm_channels_tex", () => ({
  bindings: [
    { name: "a", access: "read" },
    { name: "b", access: "read" },
    { name: "g", access: "read" },
    { name: "d", access: "read" },
    { name: "e", access: "read" },
    { name: "P", access: "read_write", texture: "write" },
  ],
  uniforms: { c: "u32" },
  workgroupSize: [64],
  body: `
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) gid: vec3u) {
  let ch = gid.x;
  if (ch >= p.c) { return; }
  textureStore(P, vec2u(ch, 0u), vec4f(a[ch], b[ch], g[ch], d[ch]));
  textureStore(P, vec2u(ch, 1u), vec4f(e[ch], 0.0, 0.0, 0.0));
}`,
}));

// applyKernel (vec4, or `scalar` where H·W % 4 ≠ 0: element j = y · 4·FLAT_WIDTH + x) with x from flat
// texture X and the channel's values from P.
const applyTexKernel = variants(
  "batchnorm_apply_tex",
  (p: { running: boolean; relu: boolean; scalar?: boolean }) => ({
    bindings: [
      { name: "X", access: "read", texture: "sampled" },
      { name: "P", access: "read", texture: "sampled" },
      { name: "y", access: "read_write", type: p.scalar ? "f32" : "vec4<f32>" },
    ] as const,
    uniforms: { c: "u32", hw: "u32", eps: "f32", n4: "u32" },
    workgroupSize: [64],
    body: wgsl`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) gid: vec3u) {
#if ${!!p.scalar}
  let j = gid.y * ${4 * FLAT_WIDTH}u + gid.x;
  if (j >= 4u * p.n4) { return; }
  let ch = (j / p.hw) % p.c;
  let xv = ${flatLoad("X", "j")};
#else
  let j = gid.y * ${FLAT_WIDTH}u + gid.x;
  if (j >= p.n4) { return; }
  let ch = (4u * j / p.hw) % p.c;
  let xv = textureLoad(X, gid.xy, 0);
#endif
  let q = textureLoad(P, vec2u(ch, 0u), 0);
#if ${p.running}
  let inv = 1.0 / sqrt(q.y + p.eps);
#else
  let inv = q.y;
#endif
  let v = (xv - q.x) * inv * q.z + q.w;
#if ${p.relu}
  y[j] = max(v, ${p.scalar ? "f32" : "vec4f"}(0.0));
#else
  y[j] = v;
#endif
}`,
  }),
);

// backwardInputKernel (vec4, or `scalar` as applyTexKernel) with dy and x from flat textures DY and X and the
// channel's values from P.
const backwardInputTexKernel = variants(
  "batchnorm_backward_input_tex",
  (p: { eval: boolean; scalar?: boolean }) => ({
    bindings: [
      { name: "DY", access: "read", texture: "sampled" },
      { name: "X", access: "read", texture: "sampled" },
      { name: "P", access: "read", texture: "sampled" },
      { name: "dx", access: "read_write", type: p.scalar ? "f32" : "vec4<f32>" },
    ] as const,
    uniforms: { c: "u32", hw: "u32", m: "u32", n4: "u32" },
    workgroupSize: [64],
    body: wgsl`
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) gid: vec3u) {
#if ${!!p.scalar}
  let j = gid.y * ${4 * FLAT_WIDTH}u + gid.x;
  if (j >= 4u * p.n4) { return; }
  let ch = (j / p.hw) % p.c;
  let dyv = ${flatLoad("DY", "j")};
  let xv = ${flatLoad("X", "j")};
#else
  let j = gid.y * ${FLAT_WIDTH}u + gid.x;
  if (j >= p.n4) { return; }
  let ch = (4u * j / p.hw) % p.c;
  let dyv = textureLoad(DY, gid.xy, 0);
  let xv = textureLoad(X, gid.xy, 0);
#endif
  let q = textureLoad(P, vec2u(ch, 0u), 0);
  let r = q.y;
#if ${p.eval}
  dx[j] = q.z * r * dyv;
#else
  let xhat = (xv - q.x) * r;
  let dbias = textureLoad(P, vec2u(ch, 1u), 0).x;
  dx[j] = q.z * r * (dyv - (dbias + xhat * q.w) / f32(p.m));
#endif
}`,
  }),
);

/**
 * Run an elementwise pass through textures where `inputs` fit flat textures (or come with theirs, already
 * filled): the per-channel texture from `channels` (five (C) tensors; placeholders where unused), then one
 * dispatch of `run(textures, P, workgroups)` over the whole tensor. False (nothing run) where a texture would
 * exceed the adapter's size.
 */
function runTex(
  inputs: [string, Tensor, EngineTexture?][],
  scalar: boolean,
  channels: Tensor[],
  run: (textures: EngineTexture[], P: EngineTexture, workgroups: [number, number, number]) => void,
): boolean {
  const e = channels[0].engine;
  const ts: EngineTexture[] = [];
  for (const [role, t, ready] of inputs) {
    const T = ready ?? flatTexture(e, role, t);
    if (!T) return false;
    ts.push(T);
  }
  const c = channels[0].size;
  const P = e.texture("batchnorm.P", c, 2);
  e.run(channelTexKernel(), {
    bindings: [...channels, P],
    uniforms: { c },
    workgroups: grid(c, 64),
    info: `[${c}] → ${c}×2 texels`,
  });
  // vec4 kernels: FLAT_WIDTH invocations a row (one texel each); scalar ones 4 · FLAT_WIDTH (one value each).
  const rows = Math.ceil(inputs[0][1].size / 4 / FLAT_WIDTH);
  run(ts, P, [(scalar ? 4 * FLAT_WIDTH : FLAT_WIDTH) / 64, rows, 1]);
  return true;
}

// ---------------------------------------------------------------- variants

/**
 * The tuning-table ops of batch norm: the two per-channel partial-sum passes (`tree`, `serial/<chunk>`)
 * and the two elementwise passes (`scalar`, `vec4`).
 */
export type BatchNormTuningOp = "batchnorm.stats" | "batchnorm.sums" | "batchnorm.apply" | "batchnorm.dx";

/** Each op as error messages name it. */
const OP_NAME: Record<BatchNormTuningOp, string> = {
  "batchnorm.stats": "batchNorm2d (statistics)",
  "batchnorm.sums": "batchNorm2d backward (Σdy, Σdy·x̂)",
  "batchnorm.apply": "batchNorm2d (normalise)",
  "batchnorm.dx": "batchNorm2d backward (input)",
};

/** Chunks of the `serial` candidates that {@linkcode batchNormCandidates} offers. */
const SERIAL_CHUNKS = [256, 512, 1024, 2048] as const;
/** Largest chunk of `serial/<chunk>`: one invocation's loops stay far below llvmpipe's 65 535 iterations. */
const SERIAL_MAX_CHUNK = 16384;
/**
 * The chunk of `serial` (and the default on software adapters): the fastest candidate on llvmpipe (2 cores)
 * over ResNet-50's 53 batch norms at batch 2 and 8, by a few per cent (GPU time of the statistics and
 * backward-sum passes at batch 2, ±10 % run to run: ≈ 25 + 36 ms; 1024: 27 + 38 ms; 256: 39 + 60 ms; tree:
 * 740 + 500 ms).
 */
const SERIAL_DEFAULT = 2048;

/**
 * An elementwise pass: one value per invocation, four of one channel (`vec4`), or four read through
 * flat textures (`tex`; where H·W % 4 ≠ 0 one value per invocation, from textures too where the size is a
 * multiple of 4; from storage where the tensor exceeds a binding or a texture).
 */
interface Elementwise {
  elementwise: "scalar" | "vec4" | "tex";
}

/**
 * A partial-sum pass: the workgroup tree, or one invocation per chunk of `chunk` values; `tex`: serial,
 * reading x (and dy) from flat textures where the tensor is one binding and H·W % 4 = 0 (the same bits).
 */
interface Partials {
  serial: boolean;
  chunk: number;
  tex: boolean;
  /** The workgroup reduction through subgroup operations instead of the tree (`subgroup`). */
  sg: boolean;
}

/** The variant `id` of `op`: a {@linkcode Partials} or (elementwise ops) whether it is `vec4`; or why not. */
function parseVariant(op: BatchNormTuningOp, id: string): Partials | Elementwise | string {
  if (op === "batchnorm.apply" || op === "batchnorm.dx") {
    if (id === "scalar" || id === "vec4" || id === "tex") return { elementwise: id };
    return "the variants are scalar, vec4 and tex";
  }
  if (id === "tree") return { serial: false, chunk: CHUNK, tex: false, sg: false };
  if (id === "subgroup") return { serial: false, chunk: CHUNK, tex: false, sg: true };
  const parts = id.split("/");
  const tex = parts.length > 1 && parts[parts.length - 1] === "tex";
  if (tex) parts.pop();
  const [name, arg, ...rest] = parts;
  if (name !== "serial" || rest.length > 0) {
    return "the variants are tree, subgroup and serial[/<chunk>][/tex]";
  }
  const chunk = arg === undefined ? SERIAL_DEFAULT : Number(arg);
  if (!Number.isInteger(chunk) || chunk < 4 || chunk > SERIAL_MAX_CHUNK || chunk % 4 !== 0) {
    return `the chunk of serial must be a multiple of 4 in [4, ${SERIAL_MAX_CHUNK}], current value is ${arg}`;
  }
  return { serial: true, chunk, tex, sg: false };
}

/** The built-in choice: `serial` and `vec4` on software adapters (llvmpipe), `tree` and `scalar` on GPUs. */
function defaultVariant(e: Engine, op: BatchNormTuningOp): string {
  const software = e.adapterInfo.software;
  if (op === "batchnorm.stats" || op === "batchnorm.sums") {
    return software ? `serial/${SERIAL_DEFAULT}/tex` : "tree";
  }
  return software ? "tex" : "scalar";
}

function checkOp(op: string, what: string): asserts op is BatchNormTuningOp {
  if (!Object.hasOwn(OP_NAME, op)) {
    throw new RangeError(`Cannot ${what} for "${op}": the ops are ${Object.keys(OP_NAME).join(", ")}`);
  }
}

/**
 * The variant id `op` runs for input `shape` on `e`: a forced one, else the tuning table's, else the
 * default. A forced id that does not parse throws a RangeError naming it; a table's gives way to the default.
 */
function resolve(e: Engine, op: BatchNormTuningOp, shape: readonly number[]): string {
  const [n, c, h, w] = shape;
  const shapeClass = batchNormShapeClass(c, n * h * w);
  const id = chosenVariant(e, op, shapeClass);
  if (id === undefined) return defaultVariant(e, op);
  const parsed = parseVariant(op, id);
  const why = typeof parsed === "string"
    ? parsed
    : "sg" in parsed && parsed.sg && !hasSubgroups(e)
    ? NO_SUBGROUPS
    : null;
  if (why === null) return id;
  const key = tuningKey(op, shapeClass);
  if (tuningOf(e)?.entries[key] === id) return defaultVariant(e, op);
  throw new RangeError(`Cannot ${OP_NAME[op]} of shape [${shape}] with variant "${id}": ${why}`);
}

const partialsOf = (e: Engine, op: "batchnorm.stats" | "batchnorm.sums", shape: readonly number[]) =>
  parseVariant(op, resolve(e, op, shape)) as Partials;
const elementwiseOf = (e: Engine, op: "batchnorm.apply" | "batchnorm.dx", shape: readonly number[]) =>
  (parseVariant(op, resolve(e, op, shape)) as Elementwise).elementwise;

/**
 * The shape class of a batch norm in the tuning table: the channels and the values per channel
 * (M = N·H·W) rounded up to powers of two, e.g. `c64 m32768` for [2, 64, 112, 112].
 *
 * @example
 * ```ts
 * batchNormShapeClass(2048, 2 * 7 * 7); // "c2048 m128"
 * ```
 */
export function batchNormShapeClass(c: number, m: number): string {
  const pow2 = (v: number) => 2 ** Math.ceil(Math.log2(Math.max(v, 1)));
  return `c${pow2(c)} m${pow2(m)}`;
}

/**
 * The variants `he2gene tune` times for `op` on an input of `shape` (N, C, H, W): for the partial-sum
 * passes `tree`, `subgroup` where `subgroups` is true (the device has the feature: {@linkcode hasSubgroups})
 * and `serial/<chunk>` (256 … 2048, those that split a channel differently), for the elementwise passes
 * `scalar` and, where H·W is a multiple of 4, `vec4`.
 *
 * @example
 * ```ts
 * batchNormCandidates("batchnorm.stats", [2, 2048, 7, 7]); // ["tree", "serial/256"]
 * ```
 */
export function batchNormCandidates(
  op: BatchNormTuningOp,
  shape: readonly number[],
  subgroups = false,
): string[] {
  checkOp(op, "list batch-norm candidates");
  const [n, , h, w] = shape;
  if (op === "batchnorm.apply" || op === "batchnorm.dx") {
    return (h * w) % 4 === 0 ? ["scalar", "vec4", "tex"] : ["scalar"];
  }
  const m = n * h * w;
  const serial = SERIAL_CHUNKS.filter((_, i) => i === 0 || m > SERIAL_CHUNKS[i - 1]);
  const tex = (h * w) % 4 === 0 ? serial.map((k) => `serial/${k}/tex`) : [];
  return ["tree", ...(subgroups ? ["subgroup"] : []), ...serial.map((k) => `serial/${k}`), ...tex];
}

/**
 * The variant `op` runs for an input of `shape` on `engine` now: a forced one, else the tuning table's,
 * else the built-in default for the adapter's kind.
 *
 * @example
 * ```ts
 * batchNormVariantFor(engine, "batchnorm.stats", [2, 64, 112, 112]); // "serial/2048" on llvmpipe
 * ```
 */
export function batchNormVariantFor(engine: Engine, op: BatchNormTuningOp, shape: readonly number[]): string {
  checkOp(op, "name the batch-norm variant");
  return resolve(engine, op, shape);
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

/**
 * y = normalise(x) with `ch` = (mean, rstd or running variance, γ, β): through textures for `tex` where the
 * tensor is one binding and a texture and H·W % 4 = 0, else per run of samples with the vec4 or scalar
 * kernel.
 */
function runApply(
  op: string,
  x: Tensor,
  y: Tensor,
  ch: Tensor[],
  o: { running: boolean; relu: boolean; eps: number; elementwise: Elementwise["elementwise"] },
  /** x's flat texture where the statistics pass just filled it. */
  X?: EngineTexture | null,
): void {
  const e = x.engine;
  const [, c, h, w] = x.shape;
  const hw = h * w;
  const { runs, sample } = sampleRuns(op, x);
  const scalar = hw % 4 !== 0;
  const tex = o.elementwise === "tex" && runs.length === 1 &&
    runTex(
      [["batchnorm.x", x, X ?? undefined]],
      scalar,
      [...ch, e.placeholder()],
      ([X], P, workgroups) =>
        e.run(applyTexKernel({ running: o.running, relu: o.relu, ...(scalar ? { scalar } : {}) }), {
          bindings: [X, P, y],
          uniforms: { c, hw, eps: o.eps, n4: x.size / 4 },
          workgroups,
          info: `[${x.shape}] textures`,
        }),
    );
  if (tex) return;
  for (const r of runs) {
    const start = r.start * sample, size = r.count * sample;
    const bx = bindElements(x, start, size), by = bindElements(y, start, size);
    const v4 = o.elementwise !== "scalar" && vec4Fits(hw, bx.off, by.off);
    e.run(applyKernel({ running: o.running, relu: o.relu, vec4: v4 }), {
      bindings: [bx.binding, ...ch, by.binding],
      uniforms: { n: size, c, hw, eps: o.eps, off: bx.off },
      workgroups: grid(v4 ? size / 4 : size, WG),
      info: `[${x.shape}] @${start}+${size}`,
    });
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
 * Runs of whole samples that fit one storage binding, and the per-channel partials of the partial-sum
 * passes in chunks of `chunk` values: run r writes `parts[r]` columns from `qbase[r]`; every run but the
 * last holds `mrun` values per channel in `prun` parts.
 */
function sampleRuns(op: string, x: Tensor, chunk = CHUNK) {
  const [n, c, h, w] = x.shape;
  const hw = h * w;
  const runs = rowRuns(x.engine, op, n, [c * hw], "sample").map((r) => {
    const m = r.count * hw;
    return { ...r, m, parts: Math.ceil(m / chunk), qbase: 0 };
  });
  let q = 0;
  for (const r of runs) {
    r.qbase = q;
    q += r.parts;
  }
  return { runs, sample: c * hw, mrun: runs[0].m, prun: runs[0].parts, ptotal: q };
}

/** Whether a vec4 kernel may bind these runs: H·W and every binding's element offset multiples of 4. */
const vec4Fits = (hw: number, ...offs: number[]) => hw % 4 === 0 && offs.every((o) => o % 4 === 0);

/** Running statistics that a training forward updates in place, and the weight of the new batch. */
interface RunningUpdate {
  runningMean: Tensor;
  runningVar: Tensor;
  momentum: number;
}

/**
 * The batch statistics of x (N, C, H, W) into `mean` and `rstd` (C): the partial-sum pass of the variant
 * chosen for `batchnorm.stats`, then the finalize pass (which blends the running statistics with `update`).
 * Returns the flat texture of x the partial sums read (null where they read storage), still holding x.
 */
function runStatistics(
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  eps: number,
  update: RunningUpdate | null,
): EngineTexture | null {
  const [n, c, h, w] = x.shape;
  const hw = h * w, e = x.engine;
  const cfg = partialsOf(e, "batchnorm.stats", x.shape);
  const { chunk } = cfg;
  const { runs, sample, mrun, prun, ptotal } = sampleRuns("batchNorm2d", x, chunk);
  const part = e.empty([c, ptotal, 2], "batchnorm partials");
  const X = cfg.tex && runs.length === 1 && hw % 4 === 0 ? flatTexture(e, "batchnorm.x", x) : null;
  for (const r of runs) {
    const { binding, off } = bindElements(x, r.start * sample, r.count * sample);
    const uniforms = { c, hw, m: r.m, chunk, parts: r.parts, off, qbase: r.qbase, ptotal };
    const info = `[${x.shape}] n ${r.start}+${r.count}→[${c},${ptotal},2]`;
    if (cfg.serial) {
      e.run(statsSerialKernel({ vec4: vec4Fits(hw, off), ...(X ? { tex: true } : {}) }), {
        bindings: [X ?? binding, part],
        uniforms,
        workgroups: grid(c * r.parts, SERIAL_WG),
        info: `${info} chunk ${chunk}`,
      });
    } else {
      e.run(statsKernel({ sg: cfg.sg }), {
        bindings: [binding, part],
        uniforms,
        workgroups: grid(c * r.parts, 1),
        info,
      });
    }
  }
  e.run(finalizeKernel({ update: update !== null }), {
    bindings: update ? [part, mean, rstd, update.runningMean, update.runningVar] : [part, mean, rstd],
    uniforms: { c, m: n * hw, chunk, parts: ptotal, mrun, prun, eps, momentum: update?.momentum ?? 0 },
    workgroups: grid(c, 64),
    info: `[${c},${ptotal},2]→[${c}]`,
  });
  part.dispose();
  return X;
}

/** The training-mode batch statistics of x (N, C, H, W), each (C): mean and 1/√(biased var + eps). */
export interface BatchNorm2dStatistics {
  mean: Tensor;
  rstd: Tensor;
}

/**
 * The batch statistics that training-mode {@linkcode batchNorm2dForward} normalises with, alone: no output,
 * no running statistics (the pass `he2gene tune` times for `batchnorm.stats`).
 *
 * @example
 * ```ts
 * const { mean, rstd } = batchNorm2dStatistics(x); // x: [N, C, H, W] → [C], [C]
 * ```
 */
export function batchNorm2dStatistics(x: Tensor, options: { eps?: number } = {}): BatchNorm2dStatistics {
  const op = "batchNorm2d statistics";
  const [n, c, h, w] = checkInput(op, x);
  if (n * h * w <= 1) {
    throw new RangeError(
      `Cannot ${op}: expected more than 1 value per channel, current value is input shape [${x.shape}]`,
    );
  }
  const e = x.engine;
  const mean = e.empty([c], "batchnorm mean"), rstd = e.empty([c], "batchnorm rstd");
  runStatistics(x, mean, rstd, options.eps ?? 1e-5, null);
  return { mean, rstd };
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
  const elementwise = elementwiseOf(e, "batchnorm.apply", x.shape);
  const mean = e.empty([c], "batchnorm mean");
  const rstd = e.empty([c], "batchnorm rstd");
  let X: EngineTexture | null = null;
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
    const update = hasRunning
      ? { runningMean: runningMean!, runningVar: runningVar!, momentum: momentum ?? 0 }
      : null;
    X = runStatistics(x, mean, rstd, eps, update);
  } else if (c > 0) {
    e.run(runningStatsKernel(), {
      bindings: [runningMean!, runningVar!, mean, rstd],
      uniforms: { c, eps },
      workgroups: grid(c, 64),
      info: `[${c}]`,
    });
  }
  const y = e.empty(x.shape, "batchnorm");
  runApply(op, x, y, [mean, rstd, weight!, bias!], { running: false, relu: false, eps, elementwise }, X);
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

/** What backward reads: γ and the statistics saved by {@linkcode batchNorm2dForward}. */
export interface BatchNorm2dSaved {
  /** γ, (C). */
  weight: Tensor;
  /** (C). */
  mean: Tensor;
  /** (C). */
  rstd: Tensor;
  /** The forward's mode: training normalised with the batch statistics (dx then depends on them). */
  training: boolean;
}

function checkBackward(op: string, dy: Tensor, x: Tensor): number[] {
  const shape = checkInput(op, x);
  if (!(dy instanceof Tensor) || dy.size !== x.size) {
    throw new RangeError(`Cannot ${op}: dy has shape [${dy?.shape}], input has [${x.shape}]`);
  }
  return shape;
}

/**
 * The gradients of γ and β alone, dweight = Σ dy·x̂ and dbias = Σ dy (C), from x, dy and the saved
 * statistics (the pass `he2gene tune` times for `batchnorm.sums`).
 *
 * @example
 * ```ts
 * const { dweight, dbias } = batchNorm2dParamGrads(dy, x, { mean, rstd });
 * ```
 */
export function batchNorm2dParamGrads(
  dy: Tensor,
  x: Tensor,
  saved: { mean: Tensor; rstd: Tensor },
): { dweight: Tensor; dbias: Tensor } {
  const { dweight, dbias } = paramGrads(dy, x, saved);
  return { dweight, dbias };
}

// batchNorm2dParamGrads, and the flat textures of dy and x it filled (null where it read storage).
function paramGrads(
  dy: Tensor,
  x: Tensor,
  saved: { mean: Tensor; rstd: Tensor },
): { dweight: Tensor; dbias: Tensor; flat: { DY: EngineTexture; X: EngineTexture } | null } {
  const op = "batchNorm2d backward";
  const [n, c, h, w] = checkBackward(op, dy, x);
  const hw = h * w, e = x.engine;
  const dweight = e.zeros([c], "batchnorm dweight");
  const dbias = e.zeros([c], "batchnorm dbias");
  if (n * hw === 0) return { dweight, dbias, flat: null };
  const cfg = partialsOf(e, "batchnorm.sums", x.shape);
  const { chunk } = cfg;
  const { runs, sample, ptotal } = sampleRuns(op, x, chunk);
  const part = e.empty([c, ptotal, 2], "batchnorm backward partials");
  const flat = cfg.tex && runs.length === 1 && hw % 4 === 0;
  const DY = flat ? flatTexture(e, "batchnorm.dy", dy) : null;
  const X = DY ? flatTexture(e, "batchnorm.x", x) : null;
  for (const r of runs) {
    const bx = bindElements(x, r.start * sample, r.count * sample);
    const bdy = bindElements(dy, r.start * sample, r.count * sample);
    const bindings = DY && X
      ? [DY, X, saved.mean, saved.rstd, part]
      : [bdy.binding, bx.binding, saved.mean, saved.rstd, part];
    const uniforms = { c, hw, m: r.m, chunk, parts: r.parts, off: bx.off, qbase: r.qbase, ptotal };
    const info = `[${x.shape}] n ${r.start}+${r.count}→[${c},${ptotal},2]`;
    if (cfg.serial) {
      const tex = DY && X ? { tex: true } : {};
      e.run(backwardSumsSerialKernel({ vec4: vec4Fits(hw, bx.off, bdy.off), ...tex }), {
        bindings,
        uniforms,
        workgroups: grid(c * r.parts, SERIAL_WG),
        info: `${info} chunk ${chunk}`,
      });
    } else {
      e.run(backwardSumsKernel({ sg: cfg.sg }), {
        bindings,
        uniforms,
        workgroups: grid(c * r.parts, 1),
        info,
      });
    }
  }
  e.run(backwardFinalizeKernel(), {
    bindings: [part, dweight, dbias],
    uniforms: { c, parts: ptotal },
    workgroups: grid(c, 64),
    info: `[${c},${ptotal},2]→[${c}]`,
  });
  part.dispose();
  return { dweight, dbias, flat: DY && X ? { DY, X } : null };
}

/**
 * The gradient of x alone, from dy, x, the saved statistics and the sums of
 * {@linkcode batchNorm2dParamGrads} (read in training mode only): the pass `he2gene tune` times for
 * `batchnorm.dx`.
 *
 * @example
 * ```ts
 * const { dweight, dbias } = batchNorm2dParamGrads(dy, x, { mean, rstd });
 * const dx = batchNorm2dBackwardInput(dy, x, { weight, mean, rstd, training: true, dweight, dbias });
 * ```
 */
export function batchNorm2dBackwardInput(
  dy: Tensor,
  x: Tensor,
  saved: BatchNorm2dSaved & { dweight: Tensor; dbias: Tensor },
): Tensor {
  return backwardInput(dy, x, saved, null);
}

// batchNorm2dBackwardInput, reading dy and x from `flat` where given (paramGrads' textures, still holding
// them: the two passes of one backward fill them once).
function backwardInput(
  dy: Tensor,
  x: Tensor,
  saved: BatchNorm2dSaved & { dweight: Tensor; dbias: Tensor },
  flat: { DY: EngineTexture; X: EngineTexture } | null,
): Tensor {
  const op = "batchNorm2d backward (input)";
  const [n, c, h, w] = checkBackward(op, dy, x);
  const hw = h * w, m = n * hw, e = x.engine;
  const dx = e.empty(x.shape, "batchnorm dx");
  if (m === 0) return dx;
  const elementwise = elementwiseOf(e, "batchnorm.dx", x.shape);
  const { runs, sample } = sampleRuns(op, x);
  const ch = [saved.mean, saved.rstd, saved.weight, saved.dweight, saved.dbias];
  const scalar = hw % 4 !== 0;
  const tex = elementwise === "tex" && runs.length === 1 &&
    runTex(
      [["batchnorm.dy", dy, flat?.DY], ["batchnorm.x", x, flat?.X]],
      scalar,
      ch,
      ([DY, X], P, workgroups) =>
        e.run(backwardInputTexKernel({ eval: !saved.training, ...(scalar ? { scalar } : {}) }), {
          bindings: [DY, X, P, dx],
          uniforms: { c, hw, m, n4: x.size / 4 },
          workgroups,
          info: `[${x.shape}] textures`,
        }),
    );
  if (tex) return dx;
  for (const r of runs) {
    const start = r.start * sample, size = r.count * sample;
    const [bdy, bx, bdx] = [dy, x, dx].map((t) => bindElements(t, start, size));
    const v4 = elementwise !== "scalar" && vec4Fits(hw, bdy.off, bx.off, bdx.off);
    e.run(backwardInputKernel({ eval: !saved.training, vec4: v4 }), {
      bindings: [
        bdy.binding,
        bx.binding,
        saved.mean,
        saved.rstd,
        saved.weight,
        saved.dweight,
        saved.dbias,
        bdx.binding,
      ],
      uniforms: { n: size, c, hw, m, off: bx.off },
      workgroups: grid(v4 ? size / 4 : size, WG),
      info: `[${x.shape}] @${start}+${size}`,
    });
  }
  return dx;
}

/**
 * Batch-norm backward from the statistics saved by {@linkcode batchNorm2dForward}: the sums of
 * {@linkcode batchNorm2dParamGrads}, then {@linkcode batchNorm2dBackwardInput}. All three gradients are new
 * tensors. A batch larger than one storage binding runs as several runs of whole samples.
 *
 * @example
 * ```ts
 * const { dx, dweight, dbias } = batchNorm2dBackward(dy, x, { weight, mean, rstd, training: true });
 * ```
 */
export function batchNorm2dBackward(dy: Tensor, x: Tensor, saved: BatchNorm2dSaved): BatchNorm2dGrads {
  checkBackward("batchNorm2d backward", dy, x);
  const { dweight, dbias, flat } = paramGrads(dy, x, saved);
  const dx = backwardInput(dy, x, { ...saved, dweight, dbias }, flat);
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
  checkInput(op, x);
  const { weight, bias, runningMean, runningVar } = options;
  checkChannels(op, x, "weight", weight);
  checkChannels(op, x, "bias", bias);
  checkChannels(op, x, "runningMean", runningMean);
  checkChannels(op, x, "runningVar", runningVar);
  const e = x.engine;
  const relu = options.relu ?? false;
  const elementwise = elementwiseOf(e, "batchnorm.apply", x.shape);
  const y = e.empty(x.shape, relu ? "batchnorm_relu" : "batchnorm");
  runApply(op, x, y, [runningMean!, runningVar!, weight!, bias!], {
    running: true,
    relu,
    eps: options.eps ?? 1e-5,
    elementwise,
  });
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
