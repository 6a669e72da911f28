/**
 * Fused scaled dot-product attention, out = softmax(Q·Kᵀ·scale)·V for Q, K, V of shape [B, H, N, d]
 * (`torch.nn.functional.scaled_dot_product_attention` without mask or dropout), forward and backward,
 * FlashAttention-style (Dao et al. 2022, https://arxiv.org/abs/2205.14135; FlashAttention-2,
 * https://arxiv.org/abs/2307.08691): the N×N scores are never stored.
 *
 * - Forward: one workgroup of `BR` invocations per (b·h, block of BR query rows), one invocation
 *   per query row holding q·scale and its output accumulator in registers; K and V go through workgroup
 *   memory in tiles of `BC` keys; a running max m and sum l per row rescale the accumulator once
 *   per tile (online softmax). Saves the row logsumexp L = m + log l ([B, H, N]).
 * - Backward, from O, L and dO, with P_ij = exp(s_ij − L_i) recomputed, Dᵢ = Σ dOᵢ·Oᵢ and
 *   dS_ij = P_ij·(dOᵢ·V_j − Dᵢ):
 *   `attention_backward_q`: dQᵢ = scale·Σ_j dS_ij K_j, one invocation per query row over K/V tiles (as the
 *   forward), also writing D;
 *   `attention_backward_kv`: dK_j = scale·Σᵢ dS_ij Qᵢ and dV_j = Σᵢ P_ij dOᵢ, one invocation per key row over
 *   tiles of `TQ` query rows of Q, dO, L, D. Two passes, each thread owning its outputs: no atomics,
 *   deterministic.
 *
 * Workgroup memory stays ≤ 16 KiB (WebGPU's default `maxComputeWorkgroupStorageSize`) for d ≤ 64:
 * 2·BC·d floats in the forward and dQ passes, (2·d + 2)·TQ in the dK/dV pass. Each head dimension d ≤ 64 is
 * its own shader variant (constant loop bounds and register arrays); when d is a multiple of 4 rows are held
 * as vec4s (on llvmpipe this halves the time at ViT-S/16 sizes: forward at [8, 6, 197, 64] 946 → 409 ms). The differentiable `attention` is in
 * ops/transformer.ts.
 *
 * @module
 */
import { variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { NEG_MAX, stagesTiles, wgsl } from "./_wgsl.ts";

/** Query rows per workgroup (forward and dQ), key rows per workgroup (dK/dV). */
const BR = 32;
/** Keys per K/V tile in workgroup memory (forward and dQ). */
const BC = 32;
/** Query rows per Q/dO tile in workgroup memory (dK/dV). */
const TQ = 16;
/** Largest head dimension the kernels take (workgroup memory ≤ 16 KiB). */
export const MAX_HEAD_DIM = 64;

/**
 * How a kernel of head dimension d holds rows: as W = d/4 vec4s when d is a multiple of 4 (dot() and vector
 * FMAs), else as d scalars; `load(a, at)` reads element `at` of row storage `a` (f32) as one such value,
 * `sum(x)` is the scalar sum of one.
 */
function rowLayout(d: number) {
  const v4 = d % 4 === 0;
  return {
    v4,
    w: v4 ? d / 4 : d,
    t: v4 ? "vec4f" : "f32",
    /** Elements per value. */
    step: v4 ? "4u" : "1u",
    load: (a: string, at: string) =>
      v4 ? `vec4f(${a}[${at}], ${a}[${at} + 1u], ${a}[${at} + 2u], ${a}[${at} + 3u])` : `${a}[${at}]`,
    sum: (x: string) => (v4 ? `(${x}.x + ${x}.y + ${x}.z + ${x}.w)` : x),
    store: (a: string, at: string, x: string) =>
      v4
        ? `${a}[${at}] = ${x}.x; ${a}[${at} + 1u] = ${x}.y; ${a}[${at} + 2u] = ${x}.z; ${a}[${at} + 3u] = ${x}.w;`
        : `${a}[${at}] = ${x};`,
  };
}

/** A kernel's variant: head dimension d, tiles staged in workgroup memory or read from storage. */
type AttentionVariant = { d: number; staged: boolean };

/** Options of {@linkcode attentionForward} and {@linkcode attentionBackward}. */
export interface AttentionOptions {
  /**
   * Stage the K/V (forward, dQ) and Q/dO (dK/dV) tiles in workgroup memory, or read them from storage;
   * {@linkcode stagesTiles} for the adapter by default (`selftest` runs both).
   */
  staged?: boolean;
}

/**
 * Component c of row `i` of the current tile (its first row `r0`) of storage `src`: from workgroup array
 * `ws` when the kernel stages its tiles, else read from storage.
 */
function tileAt(p: AttentionVariant, l: ReturnType<typeof rowLayout>, r0: string) {
  return (ws: string, src: string, i: string) =>
    p.staged ? `${ws}[${i} * W + c]` : l.load(src, `base + (${r0} + ${i}) * D + c * ${l.step}`);
}

const ENTRY = `@compute @workgroup_size(${BR}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_index) t: u32)`;

// q, k, v: (BH, N, D) → o: (BH, N, D), lse: (BH, N). Workgroup (x, y) = (query block, b·h).
const forwardKernel = variants("attention_forward", (p: AttentionVariant) => {
  const layout = rowLayout(p.d);
  const { v4, w, t, load, step } = layout;
  // Key/value j of the current tile, component c: staged in workgroup memory or read where it is.
  const tile = tileAt(p, layout, "j0");
  return {
    bindings: [
      { name: "q", access: "read" },
      { name: "k", access: "read" },
      { name: "v", access: "read" },
      { name: "o", access: "read_write" },
      { name: "lse", access: "read_write" },
    ],
    uniforms: { n: "u32", scale: "f32" },
    workgroupSize: [BR],
    body: wgsl`
const D = ${p.d}u;
const W = ${w}u;   // ${t}s per row
const BC = ${BC}u;
#if ${p.staged}
var<workgroup> ks: array<${t}, ${BC * w}>;
var<workgroup> vs: array<${t}, ${BC * w}>;
#endif
${ENTRY} {
  let bh = wid.y;
  let row = wid.x * ${BR}u + t;
  let valid = row < p.n;
  let base = bh * p.n * D;
  var qr: array<${t}, ${w}>;
  var acc: array<${t}, ${w}>;
  if (valid) {
    for (var c = 0u; c < W; c++) { qr[c] = ${load("q", `base + row * D + c * ${step}`)} * p.scale; }
  }
  var s: array<f32, ${BC}>;
  var m = ${NEG_MAX};
  var l = 0.0;
  for (var j0 = 0u; j0 < p.n; j0 += BC) {
    let cnt = min(BC, p.n - j0);
#if ${p.staged}
    workgroupBarrier();
    for (var idx = t; idx < cnt * W; idx += ${BR}u) {
      ks[idx] = ${load("k", `base + j0 * D + idx * ${step}`)};
      vs[idx] = ${load("v", `base + j0 * D + idx * ${step}`)};
    }
    workgroupBarrier();
#endif
    if (valid) {
      var mt = m;
      for (var j = 0u; j < cnt; j++) {
        var dv = ${t}(0.0);
        for (var c = 0u; c < W; c++) { dv += qr[c] * ${tile("ks", "k", "j")}; }
#if ${v4}
        let dot = dv.x + dv.y + dv.z + dv.w;
#else
        let dot = dv;
#endif
        s[j] = dot;
        mt = max(mt, dot);
      }
      let corr = exp(m - mt);
      l *= corr;
      for (var c = 0u; c < W; c++) { acc[c] *= corr; }
      for (var j = 0u; j < cnt; j++) {
        let pj = exp(s[j] - mt);
        l += pj;
        for (var c = 0u; c < W; c++) { acc[c] += pj * ${tile("vs", "v", "j")}; }
      }
      m = mt;
    }
  }
  if (valid) {
    let inv = 1.0 / l;
    for (var c = 0u; c < W; c++) {
      let a = acc[c] * inv;
#if ${v4}
      let at = base + row * D + 4u * c;
      o[at] = a.x;
      o[at + 1u] = a.y;
      o[at + 2u] = a.z;
      o[at + 3u] = a.w;
#else
      o[base + row * D + c] = a;
#endif
    }
    lse[bh * p.n + row] = m + log(l);
  }
}`,
  };
});

// q, k, v, o, dout: (BH, N, D), lse: (BH, N) → dq: (BH, N, D), dd: (BH, N) = Σ dO·O per row.
// Workgroup (x, y) = (query block, b·h).
const backwardQKernel = variants("attention_backward_q", (p: AttentionVariant) => {
  const r = rowLayout(p.d);
  const tile = tileAt(p, r, "j0");
  return {
    bindings: [
      { name: "q", access: "read" },
      { name: "k", access: "read" },
      { name: "v", access: "read" },
      { name: "o", access: "read" },
      { name: "dout", access: "read" },
      { name: "lse", access: "read" },
      { name: "dq", access: "read_write" },
      { name: "dd", access: "read_write" },
    ],
    uniforms: { n: "u32", scale: "f32" },
    workgroupSize: [BR],
    body: wgsl`
const D = ${p.d}u;
const W = ${r.w}u;
const BC = ${BC}u;
#if ${p.staged}
var<workgroup> ks: array<${r.t}, ${BC * r.w}>;
var<workgroup> vs: array<${r.t}, ${BC * r.w}>;
#endif
${ENTRY} {
  let bh = wid.y;
  let row = wid.x * ${BR}u + t;
  let valid = row < p.n;
  let base = bh * p.n * D;
  var qr: array<${r.t}, ${r.w}>;
  var dor: array<${r.t}, ${r.w}>;
  var acc: array<${r.t}, ${r.w}>;
  var dsum = ${r.t}(0.0);
  var li = 0.0;
  if (valid) {
    for (var c = 0u; c < W; c++) {
      let at = base + row * D + c * ${r.step};
      qr[c] = ${r.load("q", "at")} * p.scale;
      dor[c] = ${r.load("dout", "at")};
      dsum += dor[c] * ${r.load("o", "at")};
    }
    li = lse[bh * p.n + row];
  }
  let di = ${r.sum("dsum")};
  for (var j0 = 0u; j0 < p.n; j0 += BC) {
    let cnt = min(BC, p.n - j0);
#if ${p.staged}
    workgroupBarrier();
    for (var idx = t; idx < cnt * W; idx += ${BR}u) {
      ks[idx] = ${r.load("k", `base + j0 * D + idx * ${r.step}`)};
      vs[idx] = ${r.load("v", `base + j0 * D + idx * ${r.step}`)};
    }
    workgroupBarrier();
#endif
    if (valid) {
      for (var j = 0u; j < cnt; j++) {
        var sv = ${r.t}(0.0);
        var pv = ${r.t}(0.0);
        for (var c = 0u; c < W; c++) {
          sv += qr[c] * ${tile("ks", "k", "j")};
          pv += dor[c] * ${tile("vs", "v", "j")};
        }
        let ds = exp(${r.sum("sv")} - li) * (${r.sum("pv")} - di);
        for (var c = 0u; c < W; c++) { acc[c] += ds * ${tile("ks", "k", "j")}; }
      }
    }
  }
  if (valid) {
    for (var c = 0u; c < W; c++) {
      let a = acc[c] * p.scale;
      ${r.store("dq", `base + row * D + c * ${r.step}`, "a")}
    }
    dd[bh * p.n + row] = di;
  }
}`,
  };
});

// q, k, v, dout: (BH, N, D), lse, dd: (BH, N) → dk, dv: (BH, N, D). Workgroup (x, y) = (key block, b·h).
const backwardKVKernel = variants("attention_backward_kv", (p: AttentionVariant) => {
  const r = rowLayout(p.d);
  // Query row i of the current tile (component c) and its saved statistics, staged or read where they are.
  const tile = tileAt(p, r, "i0");
  const stat = (x: "ls" | "ds_", i: string) =>
    p.staged ? `${x}[${i}]` : `${x === "ls" ? "lse" : "dd"}[bh * p.n + i0 + ${i}]`;
  return {
    bindings: [
      { name: "q", access: "read" },
      { name: "k", access: "read" },
      { name: "v", access: "read" },
      { name: "dout", access: "read" },
      { name: "lse", access: "read" },
      { name: "dd", access: "read" },
      { name: "dk", access: "read_write" },
      { name: "dv", access: "read_write" },
    ],
    uniforms: { n: "u32", scale: "f32" },
    workgroupSize: [BR],
    body: wgsl`
const D = ${p.d}u;
const W = ${r.w}u;
const TQ = ${TQ}u;
#if ${p.staged}
var<workgroup> qs: array<${r.t}, ${TQ * r.w}>;
var<workgroup> dos: array<${r.t}, ${TQ * r.w}>;
var<workgroup> ls: array<f32, ${TQ}>;
var<workgroup> ds_: array<f32, ${TQ}>;
#endif
${ENTRY} {
  let bh = wid.y;
  let col = wid.x * ${BR}u + t;
  let valid = col < p.n;
  let base = bh * p.n * D;
  var kr: array<${r.t}, ${r.w}>;
  var vr: array<${r.t}, ${r.w}>;
  var dka: array<${r.t}, ${r.w}>;
  var dva: array<${r.t}, ${r.w}>;
  if (valid) {
    for (var c = 0u; c < W; c++) {
      let at = base + col * D + c * ${r.step};
      kr[c] = ${r.load("k", "at")} * p.scale;
      vr[c] = ${r.load("v", "at")};
    }
  }
  for (var i0 = 0u; i0 < p.n; i0 += TQ) {
    let cnt = min(TQ, p.n - i0);
#if ${p.staged}
    workgroupBarrier();
    for (var idx = t; idx < cnt * W; idx += ${BR}u) {
      qs[idx] = ${r.load("q", `base + i0 * D + idx * ${r.step}`)};
      dos[idx] = ${r.load("dout", `base + i0 * D + idx * ${r.step}`)};
    }
    if (t < cnt) {
      ls[t] = lse[bh * p.n + i0 + t];
      ds_[t] = dd[bh * p.n + i0 + t];
    }
    workgroupBarrier();
#endif
    if (valid) {
      for (var i = 0u; i < cnt; i++) {
        var sv = ${r.t}(0.0);
        var pv = ${r.t}(0.0);
        for (var c = 0u; c < W; c++) {
          sv += ${tile("qs", "q", "i")} * kr[c];
          pv += ${tile("dos", "dout", "i")} * vr[c];
        }
        let pij = exp(${r.sum("sv")} - ${stat("ls", "i")});
        let ds = pij * (${r.sum("pv")} - ${stat("ds_", "i")});
        for (var c = 0u; c < W; c++) {
          dva[c] += pij * ${tile("dos", "dout", "i")};
          dka[c] += ds * ${tile("qs", "q", "i")};
        }
      }
    }
  }
  if (valid) {
    for (var c = 0u; c < W; c++) {
      let at = base + col * D + c * ${r.step};
      let a = dka[c] * p.scale;
      ${r.store("dk", "at", "a")}
      ${r.store("dv", "at", "dva[c]")}
    }
  }
}`,
  };
});

function checkQKV(op: string, q: Tensor, k: Tensor, v: Tensor): [number, number, number, number] {
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (!(t instanceof Tensor) || t.rank !== 4) {
      throw new TypeError(
        `Cannot ${op}: ${name} must be a [B, H, N, d] tensor, current value is [${t?.shape}]`,
      );
    }
  }
  if (!k.shape.every((s, i) => s === q.shape[i]) || !v.shape.every((s, i) => s === q.shape[i])) {
    throw new RangeError(
      `Cannot ${op}: q, k and v must have one shape, current values are [${q.shape}], [${k.shape}], [${v.shape}]`,
    );
  }
  const [b, h, n, d] = q.shape;
  if (d < 1 || d > MAX_HEAD_DIM) {
    throw new RangeError(
      `Cannot ${op}: head dimension must be in [1, ${MAX_HEAD_DIM}], current value is ${d}`,
    );
  }
  return [b, h, n, d];
}

/** Output of {@linkcode attentionForward}. */
export interface AttentionForward {
  /** [B, H, N, d]. */
  out: Tensor;
  /** [B, H, N]: the row logsumexp of the scaled scores, what backward recomputes P from. */
  lse: Tensor;
}

/**
 * Fused attention forward without autograd: softmax(Q·Kᵀ·scale)·V and the row logsumexp.
 *
 * @example
 * ```ts
 * const { out, lse } = attentionForward(q, k, v, 1 / Math.sqrt(64)); // q, k, v: [B, H, N, 64]
 * ```
 */
export function attentionForward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  scale: number,
  o: AttentionOptions = {},
): AttentionForward {
  const [b, h, n, d] = checkQKV("attention", q, k, v);
  const e = q.engine;
  const staged = o.staged ?? stagesTiles(e);
  const out = e.empty(q.shape, "attention");
  const lse = e.empty([b, h, n], "attention lse");
  if (b * h * n > 0) {
    e.run(forwardKernel({ d, staged }), {
      bindings: [q, k, v, out, lse],
      uniforms: { n, scale },
      workgroups: [Math.ceil(n / BR), b * h],
      info: `[${q.shape}]`,
    });
  }
  return { out, lse };
}

/** Gradients returned by {@linkcode attentionBackward}, each [B, H, N, d]. */
export interface AttentionGrads {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

/**
 * Fused attention backward from the forward's output and logsumexp (P recomputed tile by tile; the N×N
 * matrix is never stored). All three gradients are new tensors.
 *
 * @example
 * ```ts
 * const { dq, dk, dv } = attentionBackward(dout, { q, k, v, out, lse }, scale);
 * ```
 */
export function attentionBackward(
  dout: Tensor,
  saved: { q: Tensor; k: Tensor; v: Tensor; out: Tensor; lse: Tensor },
  scale: number,
  o: AttentionOptions = {},
): AttentionGrads {
  const op = "attention backward";
  const { q, k, v, out, lse } = saved;
  const [b, h, n, d] = checkQKV(op, q, k, v);
  for (const [name, t] of [["dout", dout], ["out", out]] as const) {
    if (!(t instanceof Tensor) || t.size !== q.size) {
      throw new RangeError(`Cannot ${op}: ${name} has shape [${t?.shape}], q has [${q.shape}]`);
    }
  }
  const e = q.engine;
  const dq = e.empty(q.shape, "attention dq");
  const dk = e.empty(q.shape, "attention dk");
  const dv = e.empty(q.shape, "attention dv");
  if (b * h * n === 0) return { dq, dk, dv };
  const dd = e.empty([b, h, n], "attention D");
  const staged = o.staged ?? stagesTiles(e);
  const workgroups = [Math.ceil(n / BR), b * h] as const;
  e.run(backwardQKernel({ d, staged }), {
    bindings: [q, k, v, out, dout, lse, dq, dd],
    uniforms: { n, scale },
    workgroups,
    info: `[${q.shape}]`,
  });
  e.run(backwardKVKernel({ d, staged }), {
    bindings: [q, k, v, dout, lse, dd, dk, dv],
    uniforms: { n, scale },
    workgroups,
    info: `[${q.shape}]`,
  });
  dd.dispose();
  return { dq, dk, dv };
}

// ---------------------------------------------------------------- CPU references (float64 arithmetic)

/** P = softmax(Q·Kᵀ·scale) of one (b, h): N×N, row-major. */
function probabilities(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  base: number,
  n: number,
  d: number,
  scale: number,
) {
  const p = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += q[base + i * d + c] * k[base + j * d + c];
      p[i * n + j] = s * scale;
      m = Math.max(m, s * scale);
    }
    let l = 0;
    for (let j = 0; j < n; j++) l += p[i * n + j] = Math.exp(p[i * n + j] - m);
    for (let j = 0; j < n; j++) p[i * n + j] /= l;
  }
  return p;
}

/** CPU reference of {@linkcode attentionForward} (the output), in float64; `shape` is [B, H, N, d]. */
export function attentionCpu(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  shape: readonly number[],
  scale: number,
): Float64Array {
  const [b, h, n, d] = shape;
  const out = new Float64Array(b * h * n * d);
  for (let bh = 0; bh < b * h; bh++) {
    const base = bh * n * d, p = probabilities(q, k, base, n, d, scale);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const pij = p[i * n + j];
        for (let c = 0; c < d; c++) out[base + i * d + c] += pij * v[base + j * d + c];
      }
    }
  }
  return out;
}

/** CPU reference of {@linkcode attentionBackward}, in float64 (the full P per head). */
export function attentionBackwardCpu(
  dout: ArrayLike<number>,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  shape: readonly number[],
  scale: number,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const [b, h, n, d] = shape;
  const dq = new Float64Array(b * h * n * d),
    dk = new Float64Array(dq.length),
    dv = new Float64Array(dq.length);
  for (let bh = 0; bh < b * h; bh++) {
    const base = bh * n * d, p = probabilities(q, k, base, n, d, scale);
    for (let i = 0; i < n; i++) {
      const dp = new Float64Array(n);
      let dsum = 0;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let c = 0; c < d; c++) s += dout[base + i * d + c] * v[base + j * d + c];
        dp[j] = s;
        dsum += p[i * n + j] * s;
      }
      for (let j = 0; j < n; j++) {
        const pij = p[i * n + j], ds = pij * (dp[j] - dsum) * scale;
        for (let c = 0; c < d; c++) {
          dv[base + j * d + c] += pij * dout[base + i * d + c];
          dq[base + i * d + c] += ds * k[base + j * d + c];
          dk[base + j * d + c] += ds * q[base + i * d + c];
        }
      }
    }
  }
  return { dq, dk, dv };
}
