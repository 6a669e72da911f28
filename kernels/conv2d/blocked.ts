/**
 * The "blocked" strategy: every pass as a register-blocked GEMM in the style of kernels/matmul.ts, without
 * workgroup memory; the default on software adapters (llvmpipe), 3–5× faster there than `implicit_gemm`.
 * Variant ids: `blocked` (block size T by problem size: 32 for big products, 16 and 8 below),
 * `blocked/t8`, `blocked/t16`, `blocked/t32` (T forced), plus `/split<N>` (the weight gradient splits K
 * until at least N workgroups run; default 16), `/nomatmul` (1×1 stride-1 convolutions through this
 * strategy's own kernels instead of `matmulForward`) and `/notex` (no textures, below).
 *
 * Each invocation owns a T×T block of the output, both operands are read as vec4 along K (or along the
 * output columns), K advances by 4 per loop step with the 4 FMAs of one accumulator back to back,
 * out-of-range rows and columns are clamped (no branches in the K loop) and only stores are guarded. On
 * llvmpipe a storage load costs ~200 instructions whatever its width, so FMAs per load is what counts: a
 * T×T block does 4·T² FMAs per 2·T vec4 loads. To make K contiguous, activations are first copied to a
 * zero-padded channels-last layout (N, H+2p, W+2p, C⁴), C⁴ = C rounded up to 4 (conv1: 3 → 4), and weights
 * to (rows, KH, KW, C⁴): for fixed (n, kh) the KW·C⁴ values of one output position are contiguous.
 *
 *   forward: y[n, co, oh, ow] = Σ_kh Σ_(kw,ci) A[co, kh, kw, ci] · xp[n, oh·s + kh, ow·s + kw, ci]
 *   input gradient: one such stride-1 correlation per stride phase (ih mod s, iw mod s) over the padded
 *     channels-last dy, with the phase's taps of w flipped and transposed (rows = ci, K = (th, tw, co)), so
 *     no FMA multiplies an inserted zero; each phase stores its strided subset of dx.
 *   weight gradient: dw[co, (kh, kw, ci)] = Σ_k dyᵀ[co, k] · xp[P(k) + Q(kh, kw, ci)], k = (n, oh, ow): dyᵀ
 *     is read as vec4 along k, xp as vec4 along ci (the output columns), P(k) comes from a small table;
 *     split-K over k when the output has few blocks (or one split would loop more than
 *     MAX_LOOP_STEPS times), partials summed by `reduce`.
 *
 * Textures: where the GEMM's channels (Cin for the forward, Cout for the input gradient) round up to a
 * multiple of 16 (every ResNet-50 convolution but conv1; the forward pads each kernel row with zero taps to
 * whole 4-texel steps where that adds at most half the FMAs: conv1's 7 taps of one texel to 8, 373 →
 * 229 ms at batch 8 on llvmpipe) and the textures fit the adapter, the forward and
 * input-gradient GEMMs read the packed weight and the channels-last activations through rgba32float
 * textures instead (`conv2d_blocked_tex_fwd`, 16 k per step, the FMAs in the same order, so the same bits),
 * store whole blocks into a texture ("conv2d.blk", so the scatter fetches texels), and a small kernel
 * scatters them into y with the epilogue. On llvmpipe this halves the
 * forward's time (2 × 64 × 56² 3×3: 33 ms against 78 ms from storage buffers). The weight gradient reads
 * dyᵀ (built as a texture, one split's K per row) and xp through textures for any channel count
 * (`conv2d_blocked_tex_dw`, k positions from counters instead of the offset table, the same bits), and
 * its blocks are scattered into the split partials; 2–3× faster on llvmpipe. `notex` keeps buffers.
 *
 * 1×1 stride-1 convolutions whose H·W, Cin and Cout are multiples of 4 run through `matmulForward` on the
 * NCHW tensors (no copies; the forward without an epilogue), and with one (inference's folded batch norm,
 * ReLU, the shortcut) through `matmulRowEpilogue` where the matmul's choice is a `tex` kernel: bias per row,
 * the residual from a flat texture (ResNet-50's 1×1 convolutions at batch 8: 1.9 → 1.3 s on llvmpipe, the
 * same bits). The blocked forward's epilogue (bias, residual,
 * ReLU) is selected by uniforms rather than compiled in: each T×T variant costs seconds (T = 16) to a
 * minute (T = 32) of compilation on llvmpipe, so one kernel per block serves every epilogue.
 *
 * @module
 */
import { type Engine, type EngineTexture, grid } from "../../engine/engine.ts";
import { single, type VariantParams, variants } from "../../engine/kernel.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { blockWorkgroup, LINEAR_ID, linearEntry, wgsl } from "../_wgsl.ts";
import { matmulForward, matmulRowEpilogue } from "../matmul.ts";
import { flatLoad, flatTexel, flatTexture } from "../../engine/flat.ts";
import { fillTexture, texelsPerStep } from "../matmul_tex.ts";
import { reduce } from "../reduce.ts";
import {
  type Conv2dCall,
  type Conv2dFootprint,
  type Conv2dGeometry,
  type Conv2dOptions,
  type Conv2dPass,
  type Conv2dStrategy,
  each,
  each2,
  groups,
  ioElements,
  isGemm,
  MAX_LOOP_STEPS,
  packedWeight,
  splitParam,
  sumSplits,
  WG,
} from "./common.ts";

/** Parameters of a `blocked` variant. */
export interface BlockedConfig {
  /** Block size T (8, 16 or 32); undefined: by problem size. */
  block?: 8 | 16 | 32;
  /** Weight gradient: split K until at least this many workgroups run. */
  dwMinGroups: number;
  /** Run 1×1 stride-1 convolutions (no epilogue) through `matmulForward`. */
  matmul1x1: boolean;
  /** Read the forward and input-gradient GEMMs' operands through textures where the layout allows. */
  textures: boolean;
}

const c4 = (c: number) => Math.ceil(c / 4) * 4;

// ------------------------------------------------------------------------------------------ layouts

// The channels-last copies' uniforms: xp's padded height and width, C⁴/4, and where x starts in it.
const PADDED_UNIFORMS = { hp: "u32", wp: "u32", c4q: "u32", pt: "u32", pl: "u32" } as const;

// x: (N, C, H, W) → xp: (N, HP, WP, C⁴) as vec4, x at offset (pt, pl), zeros elsewhere.
// With `tex`, x is read from a flat texture (flatTexture: a texel fetch per value instead of a storage load,
// which is a loop over the SIMD lanes on llvmpipe); the same values.
const nhwcKernel = variants("conv2d_nhwc", (v: { tex: boolean }) => ({
  bindings: [
    v.tex ? { name: "X", access: "read", texture: "sampled" } : { name: "x", access: "read" },
    { name: "xp", access: "read_write", type: "vec4<f32>" },
  ] as const,
  uniforms: {
    c: "u32",
    h: "u32",
    w: "u32",
    ...PADDED_UNIFORMS,
    total: "u32",
    size: "u32",
  } as const,
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let cq = i % p.c4q;
  var t = i / p.c4q;
  let iw = i32(t % p.wp) - i32(p.pl);
  t = t / p.wp;
  let ih = i32(t % p.hp) - i32(p.pt);
  let n = t / p.hp;
  let inside = ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w);
  let last = p.size - 1u;
  var v = vec4<f32>(0.0);
  for (var s = 0u; s < 4u; s++) {
    let c = cq * 4u + s;
    let idx = min(((n * p.c + c) * p.h + u32(ih)) * p.w + u32(iw), last);
#if ${v.tex}
    v[s] = select(0.0, ${flatLoad("X", "idx")}, inside && c < p.c);
#else
    v[s] = select(0.0, x[idx], inside && c < p.c);
#endif
  }
  xp[i] = v;
}`,
}));

// The interior of xp from a flat texture of x whose planes are whole texels (H·W a multiple of 4), after
// nhwcBorderKernel: one invocation per 4 channels (cq, fastest) and 4 consecutive positions of a plane, which
// fetches one texel of each channel and stores 4 vec4. A quarter of nhwcKernel's fetches, and no branch
// (channels past C read 0). The same values.
const nhwcQuadKernel = single("conv2d_nhwc_quad", () => ({
  bindings: [
    { name: "X", access: "read", texture: "sampled" },
    { name: "xp", access: "read_write", type: "vec4<f32>" },
  ] as const,
  uniforms: {
    c: "u32",
    hw: "u32",
    w: "u32",
    ...PADDED_UNIFORMS,
    total: "u32",
    texels: "u32",
  } as const,
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  let cq = i % p.c4q;
  let t = i / p.c4q;
  let hq = p.hw / 4u;
  let n = t / hq;
  let p0 = (t - n * hq) * 4u;
  var v: array<vec4f, 4>;
  for (var s = 0u; s < 4u; s++) {
    let ch = cq * 4u + s;
    let texel = min(((n * p.c + ch) * p.hw + p0) / 4u, p.texels - 1u);
    v[s] = select(vec4f(0.0), ${flatTexel("X", "texel")}, ch < p.c);
  }
  var ih = p0 / p.w;
  var iw = p0 - ih * p.w;
  for (var j = 0u; j < 4u; j++) {
    let o = ((n * p.hp + ih + p.pt) * p.wp + iw + p.pl) * p.c4q + cq;
    if (i < p.total) { xp[o] = vec4f(v[0][j], v[1][j], v[2][j], v[3][j]); }
    iw++;
    if (iw == p.w) { iw = 0u; ih++; }
  }
}`,
}));

// The border of xp that nhwcQuadKernel leaves: zeros in rows [0, pt) and [pt + h, hp), and in columns
// [0, pl) and [pl + w, wp) of the rows between; one vec4 per invocation (a buffer clear of the whole of xp
// ran at ~1.7 GB/s on llvmpipe, slower than the copy itself).
const nhwcBorderKernel = single("conv2d_nhwc_border", () => ({
  bindings: [{ name: "xp", access: "read_write", type: "vec4<f32>" }] as const,
  uniforms: {
    h: "u32",
    w: "u32",
    ...PADDED_UNIFORMS,
    total: "u32",
  } as const,
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let cq = i % p.c4q;
  let t = i / p.c4q;
  let rows = (p.hp - p.h) * p.wp;
  let per = rows + p.h * (p.wp - p.w);
  let n = t / per;
  let r = t - n * per;
  var row: u32;
  var col: u32;
  if (r < rows) {
    row = r / p.wp;
    col = r - row * p.wp;
    if (row >= p.pt) { row += p.h; }
  } else {
    let side = p.wp - p.w;
    let r2 = r - rows;
    row = p.pt + r2 / side;
    col = r2 % side;
    if (col >= p.pl) { col += p.w; }
  }
  xp[((n * p.hp + row) * p.wp + col) * p.c4q + cq] = vec4f(0.0);
}`,
}));

/** Copy a (N, C, H, W) tensor to (N, H + pt + pb, W + pl + pr, C⁴), zero-padded; x from a texture with `textures`. */
export function toNhwc(x: Tensor, pt: number, pb: number, pl: number, pr: number, textures: boolean): Tensor {
  const e = x.engine;
  const [n, c, h, w] = x.shape;
  const hp = h + pt + pb, wp = w + pl + pr, c4q = c4(c) / 4;
  const total = n * hp * wp * c4q;
  const X = textures ? flatTexture(e, "conv2d.x", x) : null;
  if (X && (h * w) % 4 === 0) {
    const xp = e.empty([n, hp, wp, 4 * c4q], "conv2d channels-last");
    const border = n * (hp * wp - h * w) * c4q;
    if (border > 0) {
      e.run(nhwcBorderKernel(), {
        bindings: [xp],
        uniforms: { h, w, hp, wp, c4q, pt, pl, total: border },
        workgroups: grid(border, WG),
        info: `[${xp.shape}] border`,
      });
    }
    const quads = n * c4q * h * w / 4;
    e.run(nhwcQuadKernel(), {
      bindings: [X, xp],
      uniforms: { c, hw: h * w, w, hp, wp, c4q, pt, pl, total: quads, texels: x.size / 4 },
      workgroups: grid(quads, WG),
      info: `[${x.shape}] → [${xp.shape}] quads`,
    });
    return xp;
  }
  const xp = e.empty([n, hp, wp, 4 * c4q], "conv2d channels-last");
  e.run(nhwcKernel({ tex: X !== null }), {
    bindings: [X ?? x, xp],
    uniforms: { c, h, w, hp, wp, c4q, pt, pl, total, size: x.size },
    workgroups: grid(total, WG),
    info: `[${x.shape}] → [${xp.shape}]`,
  });
  return xp;
}

// w: (Cout, Cin, KH, KW) → a: (M, T1, T2, C⁴) as vec4, zero-padded along c; one vec4 per invocation.
//   Forward (swap 0): m = co, c = ci, kh = t1, kw = t2.
//   Input gradient (swap 1, flip 1): m = ci, c = co, kh = kh0 + s·(T1 − 1 − t1), kw = kw0 + s·(T2 − 1 − t2).
//   With `tex`, w is read from a flat texture (flatTexture), as nhwcKernel's x; the same values.
const packAKernel = variants("conv2d_pack_a", (v: { tex: boolean }) => ({
  bindings: [
    v.tex ? { name: "W", access: "read", texture: "sampled" } : { name: "w", access: "read" },
    { name: "a", access: "read_write", type: "vec4<f32>" },
  ] as const,
  uniforms: {
    cout: "u32",
    cin: "u32",
    kh: "u32",
    kw: "u32",
    kh0: "u32",
    kw0: "u32",
    s: "u32",
    t1: "u32",
    t2: "u32",
    cq: "u32",
    swap: "u32",
    flip: "u32",
    total: "u32",
    size: "u32",
  },
  workgroupSize: [WG],
  body: wgsl`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  // g.y = row m, g.x = (t1, t2, c/4) within the row: two divisions per vec4.
  let i = g.x;
  if (i >= p.total) { return; }
  let m = g.y;
  let tap = i / p.cq;
  let c4 = (i - tap * p.cq) * 4u;
  let t1 = tap / p.t2;
  let t2 = tap - t1 * p.t2;
  let kh = p.kh0 + p.s * select(t1, p.t1 - 1u - t1, p.flip == 1u);
  let kw = p.kw0 + p.s * select(t2, p.t2 - 1u - t2, p.flip == 1u);
  // Taps past the kernel (t2 up to a forward's padded row, see forward()) are zeros.
  let tap_ok = kh < p.kh && kw < p.kw;
  let kk = p.kh * p.kw;
  // w index = (co·Cin + ci)·KK + kh·KW + kw; c steps by Cin·KK (swap) or KK.
  let sw = p.swap == 1u;
  let nc = select(p.cin, p.cout, sw);
  let step = select(kk, p.cin * kk, sw);
  let base = select(m * p.cin * kk, m * kk, sw) + kh * p.kw + kw;
  let last = p.size - 1u;
  var v = vec4<f32>(0.0);
  for (var s = 0u; s < 4u; s++) {
    let idx = min(base + (c4 + s) * step, last);
#if ${v.tex}
    v[s] = select(0.0, ${flatLoad("W", "idx")}, c4 + s < nc && tap_ok);
#else
    v[s] = select(0.0, w[idx], c4 + s < nc && tap_ok);
#endif
  }
  a[m * p.total + i] = v;
}`,
}));

// The forward's packing from a flat texture where Cin is a multiple of 4: one invocation per (row m, 4
// channels q) fetches the 4·KH·KW consecutive values of w (KH·KW texels; a scalar fetch per value above)
// and stores the vec4 of every tap (zeros for the padded taps t2 ≥ KW). The same values.
// The shell of the whole-texel packing kernels: w as a flat texture W, the packed a as vec4, one invocation
// per (row, column) pair g.x = row · cq + column, named `row` and `col`; `body` the statements.
function packShell(row: string, col: string, body: string[]) {
  return {
    bindings: [
      { name: "W", access: "read", texture: "sampled" },
      { name: "a", access: "read_write", type: "vec4<f32>" },
    ] as const,
    uniforms: { cin: "u32", cq: "u32", total: "u32", n: "u32" } as const,
    workgroupSize: [WG],
    body: `
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x >= p.n) { return; }
  let ${row} = g.x / p.cq;
  let ${col} = g.x - ${row} * p.cq;
${body.join("\n")}
}`,
  };
}

const packAFwdKernel = variants("conv2d_pack_a_fwd", (v: { kh: number; kw: number; kwp: number }) => {
  const kk = v.kh * v.kw;
  const L: string[] = [];
  for (let t = 0; t < kk; t++) L.push(`  let e${t} = ${flatTexel("W", `t0 + ${t}u`)};`);
  for (let t1 = 0; t1 < v.kh; t1++) {
    for (let t2 = 0; t2 < v.kwp; t2++) {
      const tap = t1 * v.kwp + t2, src = t1 * v.kw + t2;
      const val = t2 < v.kw
        ? `vec4f(${[0, 1, 2, 3].map((s) => `e${(s * kk + src) >> 2}[${(s * kk + src) & 3}]`).join(", ")})`
        : "vec4f(0.0)";
      L.push(`  a[m * p.total + ${tap}u * p.cq + q] = ${val};`);
    }
  }
  return packShell("m", "q", [
    `  // w[m, 4q … 4q + 3, taps]: ${kk} texels from texel (m·Cin + 4q)·KH·KW / 4.`,
    `  let t0 = (m * p.cin + 4u * q) * ${kk}u / 4u;`,
    ...L,
  ]);
});

// The input gradient's packing (rows ci, K (tap, co), the phase's taps flipped) from a flat texture where
// Cin and Cout are multiples of 4: one invocation per (4 channels ci, 4 channels co) fetches each co's
// 4·KH·KW consecutive values of w (KH·KW texels) and stores the vec4 of every (ci, tap). The same values.
const packADxKernel = variants(
  "conv2d_pack_a_dx",
  (v: { kh: number; kw: number; s: number; kh0: number; kw0: number; t1: number; t2: number }) => {
    const kk = v.kh * v.kw;
    const L: string[] = [];
    for (let c = 0; c < 4; c++) {
      for (let t = 0; t < kk; t++) L.push(`  let e${c}_${t} = ${flatTexel("W", `t${c} + ${t}u`)};`);
    }
    for (let r = 0; r < 4; r++) {
      for (let t1 = 0; t1 < v.t1; t1++) {
        for (let t2 = 0; t2 < v.t2; t2++) {
          const kh = v.kh0 + v.s * (v.t1 - 1 - t1), kw = v.kw0 + v.s * (v.t2 - 1 - t2);
          const at = r * kk + kh * v.kw + kw;
          const val = `vec4f(${[0, 1, 2, 3].map((c) => `e${c}_${at >> 2}[${at & 3}]`).join(", ")})`;
          L.push(`  a[(4u * ciq + ${r}u) * p.total + ${t1 * v.t2 + t2}u * p.cq + coq] = ${val};`);
        }
      }
    }
    return packShell("ciq", "coq", [
      `  // w[co, 4ciq … 4ciq + 3, taps] for co = 4coq + c: ${kk} texels from texel (co·Cin + 4ciq)·KH·KW / 4.`,
      ...[0, 1, 2, 3].map((c) => `  let t${c} = ((4u * coq + ${c}u) * p.cin + 4u * ciq) * ${kk}u / 4u;`),
      ...L,
    ]);
  },
);

function packA(
  w: Tensor,
  g: Conv2dGeometry,
  o: { swap: boolean; kh0: number; kw0: number; t1: number; t2: number },
  call: Conv2dCall,
  W: EngineTexture | null,
): Tensor {
  const e = w.engine;
  const rows = o.swap ? g.cin : g.cout, cp = c4(o.swap ? g.cout : g.cin);
  const total = o.t1 * o.t2 * cp / 4; // vec4 per row
  // A phase without taps still binds a (never read) buffer.
  const a = e.empty([Math.max(4 * rows * total, 4)], "conv2d packed w");
  if (total === 0) return a;
  if (W && o.swap && g.cin % 4 === 0 && g.cout % 4 === 0 && g.kh * g.kw <= 9) {
    const v = { kh: g.kh, kw: g.kw, s: g.stride, kh0: o.kh0, kw0: o.kw0, t1: o.t1, t2: o.t2 };
    e.run(packADxKernel(v), {
      bindings: [W, a],
      uniforms: { cin: g.cin, cq: cp / 4, total, n: g.cin / 4 * cp / 4 },
      workgroups: groups(e, call, Math.ceil(g.cin / 4 * cp / 4 / WG), 1),
      info: `[${w.shape}] → [${rows},${o.t1},${o.t2},${cp}]`,
    });
    return a;
  }
  if (W && !o.swap && g.cin % 4 === 0 && o.t1 === g.kh && g.kh * g.kw <= 49) {
    e.run(packAFwdKernel({ kh: g.kh, kw: g.kw, kwp: o.t2 }), {
      bindings: [W, a],
      uniforms: { cin: g.cin, cq: cp / 4, total, n: rows * cp / 4 },
      workgroups: groups(e, call, Math.ceil(rows * cp / 4 / WG), 1),
      info: `[${w.shape}] → [${rows},${o.t1},${o.t2},${cp}]`,
    });
    return a;
  }
  e.run(packAKernel({ tex: W !== null }), {
    bindings: [W ?? w, a],
    uniforms: {
      cout: g.cout,
      cin: g.cin,
      kh: g.kh,
      kw: g.kw,
      kh0: o.kh0,
      kw0: o.kw0,
      s: o.swap ? g.stride : 1,
      t1: o.t1,
      t2: o.t2,
      cq: cp / 4,
      swap: o.swap ? 1 : 0,
      flip: o.swap ? 1 : 0,
      total,
      size: w.size,
    },
    workgroups: groups(e, call, Math.ceil(total / WG), rows),
    info: `[${w.shape}] → [${rows},${o.t1},${o.t2},${cp}]`,
  });
  return a;
}

// dy: (N, Cout, OHW) → dyᵀ: (Cout, K⁴), K⁴ = N·OHW rounded up to 4, zeros past N·OHW.
const dyTKernel = single("conv2d_dyt", () => ({
  bindings: [{ name: "dy", access: "read" }, { name: "dyt", access: "read_write" }],
  uniforms: { cout: "u32", ohw: "u32", nk: "u32", kp: "u32", total: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let k = i % p.kp;
  let co = i / p.kp;
  let idx = (k / p.ohw * p.cout + co) * p.ohw + k % p.ohw;
  dyt[i] = select(0.0, dy[min(idx, arrayLength(&dy) - 1u)], k < p.nk);
}`,
}));

// P[k], k < K⁴: ((n·HP + oh·s)·WP + ow·s)·C⁴/4 for k = (n, oh, ow) < N·OH·OW, else 0 (vec4 offsets into xp).
// P[K⁴ + k4]: offset of dy's vec4 k4 in A: dy itself, (n·Cout·OHW + oh·OW + ow)/4 with k = 4·k4, when
// OHW % 4 = 0 (`direct`), else k4 in the copy dyᵀ.
const pTableKernel = single("conv2d_ptable", () => ({
  bindings: [{ name: "P", access: "read_write", type: "u32" }],
  uniforms: {
    nk: "u32",
    ohw: "u32",
    ow: "u32",
    hp: "u32",
    wp: "u32",
    s: "u32",
    c4q: "u32",
    kp: "u32",
    cout: "u32",
    direct: "u32",
    total: "u32",
  },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  if (i >= p.kp) {
    let k = 4u * (i - p.kp);
    P[i] = select(k / 4u, (k / p.ohw * p.cout * p.ohw + k % p.ohw) / 4u, p.direct == 1u);
    return;
  }
  let q = i % p.ohw;
  let v = ((i / p.ohw * p.hp + q / p.ow * p.s) * p.wp + q % p.ow * p.s) * p.c4q;
  P[i] = select(0u, v, i < p.nk);
}`,
}));

// ------------------------------------------------------------------------------------------ GEMM kernels

interface BlockParams extends VariantParams {
  tm: number;
  tn: number;
  /** Invocations per workgroup: one SIMD group (kernels/_wgsl.ts `blockWorkgroup`). */
  wg: number;
}

// Row and column of the block owned by an invocation: lanes along rows (rmul = wg, rl = 1) or along
// columns (cmul = wg, cl = 1), chosen by the host as in chooseMatmulKernel.
const LANES = { rmul: "u32", rl: "u32", cmul: "u32", cl: "u32" } as const;
const blockStart = (tm: number, tn: number) =>
  `  let row0 = (wid.y * p.rmul + lid.x * p.rl) * ${tm}u;
  let col0 = (wid.x * p.cmul + lid.x * p.cl) * ${tn}u;`;

// The 4 FMAs of one accumulator back to back ("ijk"): c += a[0..3] · b[0..3].
const fma4 = (
  tm: number,
  tn: number,
  a: (i: number, s: number) => string,
  b: (j: number, s: number) => string,
) =>
  each2(tm, tn, (i, j) => {
    let v = `c${i}_${j}`;
    for (let s = 0; s < 4; s++) v = `fma(${a(i, s)}, ${b(j, s)}, ${v})`;
    return `      c${i}_${j} = ${v};`;
  });

// out[n, m, i·os + rh, j·os + rw] = epi(Σ_kh Σ_t A[m, kh, t] · B[n, i·sh + offh + kh, j·sh + offw, t])
//   A: (M, KH, ROWQ) vec4, B: (N, HP, WP, C⁴) vec4, t runs over the ROWQ = KW·C⁴/4 vec4 of one tap row.
// Columns c = (n, i, j) of the GEMM, N = batch·OHW. The epilogue's parts are switched by uniforms.
const fwdKernel = variants("conv2d_blocked_fwd", ({ tm, tn, wg }: BlockParams) => ({
  bindings: [
    { name: "A", access: "read", type: "vec4<f32>" },
    { name: "B", access: "read", type: "vec4<f32>" },
    { name: "bias", access: "read" },
    { name: "res", access: "read" },
    { name: "y", access: "read_write" },
  ],
  uniforms: {
    M: "u32",
    N: "u32",
    ohw: "u32",
    ow: "u32",
    hp: "u32",
    wp: "u32",
    c4q: "u32",
    sh: "u32",
    offh: "u32",
    offw: "u32",
    kh: "u32",
    rowq: "u32",
    oplane: "u32",
    outw: "u32",
    os: "u32",
    rh: "u32",
    rw: "u32",
    hasBias: "u32",
    hasRes: "u32",
    relu: "u32",
    ...LANES,
  },
  workgroupSize: [wg],
  body: wgsl`
@compute @workgroup_size(${wg}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_id) lid: vec3u) {
${blockStart(tm, tn)}
  let ka4 = p.kh * p.rowq;
${each(tm, (i) => `  let a${i} = min(row0 + ${i}u, p.M - 1u) * ka4;`)}
${
    each(tn, (j) =>
      `  let q${j} = min(col0 + ${j}u, p.N - 1u) % p.ohw;
  let b${j} = ((min(col0 + ${j}u, p.N - 1u) / p.ohw * p.hp + q${j} / p.ow * p.sh + p.offh) * p.wp + q${j} % p.ow * p.sh + p.offw) * p.c4q;`)
  }
${each2(tm, tn, (i, j) => `  var c${i}_${j} = 0.0;`)}
  var ab = 0u;
  var bb = 0u;
  for (var kh = 0u; kh < p.kh; kh++) {
    for (var k = 0u; k < p.rowq; k++) {
${each(tm, (i) => `      let av${i} = A[a${i} + ab + k];`)}
${each(tn, (j) => `      let bv${j} = B[b${j} + bb + k];`)}
${fma4(tm, tn, (i, s) => `av${i}[${s}]`, (j, s) => `bv${j}[${s}]`)}
    }
    ab += p.rowq;
    bb += p.wp * p.c4q;
  }
${
    each(tm, (i) =>
      `  var bi${i} = 0.0;
  if (p.hasBias != 0u) { bi${i} = bias[min(row0 + ${i}u, p.M - 1u)]; }`)
  }
${
    each(tn, (j) =>
      `  if (col0 + ${j}u < p.N) {
    let n = (col0 + ${j}u) / p.ohw;
    let q = (col0 + ${j}u) % p.ohw;
    let o = n * p.M * p.oplane + (q / p.ow * p.os + p.rh) * p.outw + q % p.ow * p.os + p.rw;
${
        each(tm, (i) =>
          `    if (row0 + ${i}u < p.M) {
      let oi = o + (row0 + ${i}u) * p.oplane;
      var v = c${i}_${j} + bi${i};
      if (p.hasRes != 0u) { v += res[oi]; }
      if (p.relu != 0u) { v = max(v, 0.0); }
      y[oi] = v;
    }`)
      }
  }`)
  }
}`,
}));

/**
 * Texels per row of the blocks texture ("conv2d.blk") that the texture GEMMs store their blocks in and the
 * scatter kernels read back: a texel fetch there where a storage load is a loop over SIMD lanes (llvmpipe).
 */
const BLOCK_WIDTH = 256;
const BLOCK_TEXEL = `fn blockTexel(i: u32) -> vec2u { return vec2u(i & ${BLOCK_WIDTH - 1}u, i >> ${
  Math.log2(BLOCK_WIDTH)
}u); }`;

// The scatter kernels' side of the block layout: the texel index of the vec4 holding (m, c0 … c0 + 3) of
// GEMM z (a split of the weight gradient; 0 for the forward) in a grid of gx × gy workgroups of TM × TN
// blocks (TM, TN as shifts) of wg invocations each, lanes along columns (`cols`) or rows.
const BLOCK_AT = `${BLOCK_TEXEL}
fn blockAt(m: u32, c0: u32, z: u32, gx: u32, gy: u32, tmShift: u32, tnShift: u32, cols: bool, wg: u32) -> u32 {
  let bm = m >> tmShift;
  let bc = c0 >> tnShift;
  // (workgroup x, workgroup y, lane) of the block holding (m, c0).
  var wx = bc / wg;
  var wy = bm;
  var lane = bc % wg;
  if (!cols) {
    wx = bc;
    wy = bm / wg;
    lane = bm % wg;
  }
  let tm = 1u << tmShift;
  let tn = 1u << tnShift;
  let blk = ((z * gy + wy) * gx + wx) * wg + lane;
  return ((blk * tm + (m & (tm - 1u))) * tn + (c0 & (tn - 1u))) / 4u;
}`;

/**
 * The blocks texture for `floats` values (BLOCK_WIDTH texels a row, the height rounded up to a power of two
 * so that few sizes recur in the texture cache), or null where it would exceed the adapter's texture size.
 */
function blockTexture(e: Engine, floats: number): EngineTexture | null {
  const height = blockRows(floats);
  return height <= e.limits.maxTextureDimension2D ? e.texture("conv2d.blk", BLOCK_WIDTH, height) : null;
}

const blockRows = (floats: number) =>
  2 ** Math.ceil(Math.log2(Math.max(Math.ceil(floats / 4 / BLOCK_WIDTH), 1)));

// The forward GEMM above with both operands read through rgba32float textures (on llvmpipe a texel fetch
// is a straight gather where a storage load is a per-lane loop; see kernels/matmul_tex.ts): A as texels
// (KH·ROWQ, M), the channels-last B as texels (WP·C⁴/4, N·HP). Four texels (16 k) per loop step (one for
// 32×32 blocks: texelsPerStep), ROWQ a multiple of 4; each accumulator's FMAs in the same k order as
// `conv2d_blocked_fwd` (bit-identical).
// Each invocation stores its whole block, unguarded, as TM·TN/4 vec4 at block index (wid.y·nwg.x + wid.x)·
// wg + lid.x of `blk`, and {@linkcode texOutKernel} scatters the blocks into y with the epilogue: a 32×32
// block's 1 024 guarded scalar stores took ~50 s of the ~75 s this kernel needed to compile on llvmpipe.
// The lane mapping is compiled in (the operand whose coordinates are the same in every lane is fetched
// once for all of them).
interface TexBlockParams extends BlockParams {
  cols: boolean;
}

const texFwdKernel = variants("conv2d_blocked_tex_fwd", ({ tm, tn, wg, cols }: TexBlockParams) => ({
  bindings: [
    { name: "A", access: "read", texture: "sampled" },
    { name: "B", access: "read", texture: "sampled" },
    { name: "blk", access: "read_write", texture: "write" },
  ] as const,
  uniforms: {
    M: "u32",
    N: "u32",
    ohw: "u32",
    ow: "u32",
    hp: "u32",
    c4q: "u32",
    sh: "u32",
    offh: "u32",
    offw: "u32",
    kh: "u32",
    rowq: "u32",
  } as const,
  workgroupSize: [wg],
  body: `
${BLOCK_TEXEL}
@compute @workgroup_size(${wg}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_id) lid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
${
    cols
      ? `  let row0 = wid.y * ${tm}u;\n  let col0 = (wid.x * ${wg}u + lid.x) * ${tn}u;`
      : `  let row0 = (wid.y * ${wg}u + lid.x) * ${tm}u;\n  let col0 = wid.x * ${tn}u;`
  }
${each(tm, (i) => `  let a${i} = min(row0 + ${i}u, p.M - 1u);`)}
${
    each(tn, (j) =>
      `  let n${j} = min(col0 + ${j}u, p.N - 1u);
  let q${j} = n${j} % p.ohw;
  let bx${j} = (q${j} % p.ow * p.sh + p.offw) * p.c4q;
  let by${j} = n${j} / p.ohw * p.hp + q${j} / p.ow * p.sh + p.offh;`)
  }
${each2(tm, tn, (i, j) => `  var c${i}_${j} = 0.0;`)}
  for (var kh = 0u; kh < p.kh; kh++) {
    let ax = kh * p.rowq;
    for (var k = 0u; k < p.rowq; k += ${texelsPerStep(tm, tn)}u) {
${
    each(texelsPerStep(tm, tn), (u) =>
      [
        each(tm, (i) => `      let av${i}_${u} = textureLoad(A, vec2u(ax + k + ${u}u, a${i}), 0);`),
        each(tn, (j) => `      let bv${j}_${u} = textureLoad(B, vec2u(bx${j} + k + ${u}u, by${j} + kh), 0);`),
      ].join("\n"))
  }
${
    each2(tm, tn, (i, j) =>
      each(4 * texelsPerStep(tm, tn), (k) =>
        `      c${i}_${j} = fma(av${i}_${k >> 2}[${k & 3}], bv${j}_${k >> 2}[${k & 3}], c${i}_${j});`))
  }
    }
  }
  let base = ((wid.y * nwg.x + wid.x) * ${wg}u + lid.x) * ${tm * tn / 4}u;
${
    each(tm, (i) =>
      each(tn / 4, (q) =>
        `  textureStore(blk, blockTexel(base + ${i * tn / 4 + q}u), vec4f(${
          [0, 1, 2, 3].map((d) =>
            `c${i}_${4 * q + d}`
          ).join(", ")
        }));`))
  }
}`,
}));

// The forward scatters' uniforms: the GEMM's size, its block layout (blockAt) and the columns per image; then
// the epilogue's switches.
const BLOCKS_UNIFORMS = {
  M: "u32",
  N: "u32",
  tmShift: "u32",
  tnShift: "u32",
  cols: "u32",
  gx: "u32",
  ohw: "u32",
  wg: "u32",
} as const;
const EPILOGUE_UNIFORMS = { hasBias: "u32", hasRes: "u32", relu: "u32" } as const;

// y[n, m, (i·os + rh), (j·os + rw)] = epi(block value of (m, c)), c = (n, i, j) < N: one invocation per
// row m (g.y) and 4 columns c (g.x; one vec4 of a block row, TN a multiple of 4); the block layout is
// texFwdKernel's, lanes along rows or columns; TM and TN as shifts.
const texOutKernel = variants("conv2d_blocked_tex_out", (v: { resTex: boolean }) => ({
  bindings: [
    { name: "blk", access: "read", texture: "sampled" },
    { name: "bias", access: "read" },
    v.resTex ? { name: "R", access: "read", texture: "sampled" } : { name: "res", access: "read" },
    { name: "y", access: "read_write" },
  ] as const,
  uniforms: {
    ...BLOCKS_UNIFORMS,
    ow: "u32",
    oplane: "u32",
    outw: "u32",
    os: "u32",
    rh: "u32",
    rw: "u32",
    ...EPILOGUE_UNIFORMS,
  },
  workgroupSize: [WG],
  body: wgsl`
${BLOCK_AT}
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let m = g.y;
  let c0 = g.x * 4u;
  if (c0 >= p.N || m >= p.M) { return; }
  let b = blockAt(m, c0, 0u, p.gx, 0u, p.tmShift, p.tnShift, p.cols != 0u, p.wg);
  let v4 = textureLoad(blk, blockTexel(b), 0);
  var bi = 0.0;
  if (p.hasBias != 0u) { bi = bias[m]; }
  // Columns c0 … c0 + 3: image n, output row r, column j, stepped without divisions.
  var n = c0 / p.ohw;
  let q = c0 % p.ohw;
  var r = q / p.ow;
  var j = q % p.ow;
  for (var s = 0u; s < 4u && c0 + s < p.N; s++) {
    let oi = (n * p.M + m) * p.oplane + (r * p.os + p.rh) * p.outw + j * p.os + p.rw;
    var v = v4[s] + bi;
    if (p.hasRes != 0u) { v += ${v.resTex ? flatLoad("R", "oi") : "res[oi]"}; }
    if (p.relu != 0u) { v = max(v, 0.0); }
    y[oi] = v;
    j++;
    if (j == p.ow) {
      j = 0u;
      r++;
      if (r * p.ow == p.ohw) {
        r = 0u;
        n++;
      }
    }
  }
}`,
}));

// texOutKernel where every 4 columns c0 … c0 + 3 are 4 consecutive, vec4-aligned values of one plane of y
// (a forward pass whose output planes are whole vec4s: stride 1 into y, H·W a multiple of 4): one block
// texel, one bias load, one residual texel and one vec4 store per invocation, with no loop or branch before
// the store (on llvmpipe a branch puts everything after it under the execution mask). The same values.
const texOutVecKernel = variants("conv2d_blocked_tex_out_vec", (v: { resTex: boolean }) => ({
  bindings: [
    { name: "blk", access: "read", texture: "sampled" },
    { name: "bias", access: "read" },
    v.resTex
      ? { name: "R", access: "read", texture: "sampled" }
      : { name: "res", access: "read", type: "vec4<f32>" },
    { name: "y", access: "read_write", type: "vec4<f32>" },
  ] as const,
  uniforms: { ...BLOCKS_UNIFORMS, ...EPILOGUE_UNIFORMS },
  workgroupSize: [WG],
  body: wgsl`
${BLOCK_AT}
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let m = min(g.y, p.M - 1u);
  let c0 = min(g.x * 4u, p.N - 4u);
  let v4 = textureLoad(blk, blockTexel(blockAt(m, c0, 0u, p.gx, 0u, p.tmShift, p.tnShift, p.cols != 0u, p.wg)), 0);
  let n = c0 / p.ohw;
  let oi = ((n * p.M + m) * p.ohw + c0 - n * p.ohw) / 4u;
  var v = v4 + vec4f(select(0.0, bias[m], p.hasBias != 0u));
  v += select(vec4f(0.0), ${v.resTex ? flatTexel("R", "oi") : "res[oi]"}, p.hasRes != 0u);
  v = select(v, max(v, vec4f(0.0)), p.relu != 0u);
  if (g.x * 4u < p.N && g.y < p.M) { y[oi] = v; }
}`,
}));

// part[z, m, c, tap] = Σ_{k in split z} A[m, k] · xp[P[k] + Q(tap, c)]
//   A = dyᵀ: (Cout, K⁴) vec4 along k = (n, oh, ow); xp: (N, HP, WP, C⁴) vec4 along c; column group
//   g = (tap, c/4), Q = (kh·WP + kw)·C⁴/4 + c/4; P[k] = ((n·HP + oh·s)·WP + ow·s)·C⁴/4 (0 past the end).
const dwKernel = variants("conv2d_blocked_dw", ({ tm, tn, wg }: BlockParams) => {
  const tq = tn / 4;
  return {
    bindings: [
      { name: "A", access: "read", type: "vec4<f32>" },
      { name: "B", access: "read", type: "vec4<f32>" },
      { name: "P", access: "read", type: "u32" },
      { name: "part", access: "read_write" },
    ],
    uniforms: {
      M: "u32",
      k4: "u32",
      kp: "u32",
      lda: "u32",
      nq: "u32",
      c4q: "u32",
      cin: "u32",
      kw: "u32",
      kk: "u32",
      wp: "u32",
      chunk: "u32",
      ...LANES,
    },
    workgroupSize: [wg],
    body: wgsl`
@compute @workgroup_size(${wg}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_id) lid: vec3u) {
${blockStart(tm, tn)}
${each(tm, (i) => `  let a${i} = min(row0 + ${i}u, p.M - 1u) * p.lda;`)}
${
      each(tq, (q) =>
        `  let g${q} = min(col0 / 4u + ${q}u, p.nq - 1u);
  let b${q} = ((g${q} / p.c4q) / p.kw * p.wp + (g${q} / p.c4q) % p.kw) * p.c4q + g${q} % p.c4q;`)
    }
${each2(tm, tn, (i, j) => `  var c${i}_${j} = 0.0;`)}
  let k1 = min(p.k4, (wid.z + 1u) * p.chunk);
  for (var k = wid.z * p.chunk; k < k1; k++) {
      let ao = P[p.kp + k];
${each(tm, (i) => `      let av${i} = A[a${i} + ao];`)}
${each(4, (s) => `      let p${s} = P[4u * k + ${s}u];`)}
${each(4, (s) => each(tq, (q) => `      let bv${s}_${q} = B[p${s} + b${q}];`))}
${fma4(tm, tn, (i, s) => `av${i}[${s}]`, (j, s) => `bv${s}_${j >> 2}[${j & 3}]`)}
  }
  let zb = wid.z * p.M * p.cin * p.kk;
${
      each(tn, (j) =>
        `  {
    let gq = col0 / 4u + ${j >> 2}u;
    let ci = gq % p.c4q * 4u + ${j & 3}u;
    if (gq < p.nq && ci < p.cin) {
      let o = zb + ci * p.kk + gq / p.c4q;
${each(tm, (i) => `      if (row0 + ${i}u < p.M) { part[o + (row0 + ${i}u) * p.cin * p.kk] = c${i}_${j}; }`)}
    }
  }`)
    }
}`,
  };
});

// dyᵀ as a texture for texDwKernel: texel (x, z·M + co) holds dyᵀ[co, 4k4 … 4k4 + 3], k4 = z·chunk + x,
// dyᵀ[co, k] = dy[n, co, q] for k = n·OHW + q < N·OHW, zeros past it (and past K⁴ in the last split).
// dy: (N, Cout, OHW); T: chunk × (splits · Cout) texels
const dyTexKernel = single("conv2d_dyt_tex", () => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "T", access: "read_write", texture: "write" },
  ] as const,
  uniforms: { M: "u32", ohw: "u32", nk: "u32", chunk: "u32", rows: "u32" } as const,
  workgroupSize: [64],
  body: `
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x >= p.chunk || g.y >= p.rows) { return; }
  let z = g.y / p.M;
  let co = g.y - z * p.M;
  let k0 = 4u * (z * p.chunk + g.x);
  var n = k0 / p.ohw;
  var q = k0 - n * p.ohw;
  var v = vec4f(0.0);
  for (var s = 0u; s < 4u; s++) {
    if (k0 + s < p.nk) { v[s] = dy[(n * p.M + co) * p.ohw + q]; }
    q++;
    if (q == p.ohw) { q = 0u; n++; }
  }
  textureStore(T, g.xy, v);
}`,
}));

// The weight-gradient GEMM of dwKernel with both operands read through textures: A = dyᵀ as dyTexKernel
// lays it out (4 k per texel), B = xp as texels (WP·C⁴/4, N·HP) like the forward's. The input positions
// of k = (n, oh, ow) come from counters stepped once per k instead of the offset table. Each accumulator's
// FMAs run in dwKernel's k order (the same bits). Blocks are stored whole, unguarded, as in texFwdKernel, at
// block index ((z·gy + wid.y)·gx + wid.x)·wg + lid.x, and dwScatterKernel writes them to the partials.
const texDwKernel = variants("conv2d_blocked_tex_dw", ({ tm, tn, wg, cols }: TexBlockParams) => {
  const tq = tn / 4;
  return {
    bindings: [
      { name: "A", access: "read", texture: "sampled" },
      { name: "B", access: "read", texture: "sampled" },
      { name: "blk", access: "read_write", texture: "write" },
    ] as const,
    uniforms: {
      M: "u32",
      N: "u32",
      k4: "u32",
      chunk: "u32",
      nq: "u32",
      c4q: "u32",
      kw: "u32",
      ohw: "u32",
      ow: "u32",
      hp: "u32",
      sc: "u32",
      sh: "u32",
    } as const,
    workgroupSize: [wg],
    body: `
${BLOCK_TEXEL}
@compute @workgroup_size(${wg}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(local_invocation_id) lid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
${
      cols
        ? `  let row0 = wid.y * ${tm}u;
  let col0 = (wid.x * ${wg}u + lid.x) * ${tn}u;`
        : `  let row0 = (wid.y * ${wg}u + lid.x) * ${tm}u;
  let col0 = wid.x * ${tn}u;`
    }
${each(tm, (i) => `  let a${i} = wid.z * p.M + min(row0 + ${i}u, p.M - 1u);`)}
${
      each(tq, (q) =>
        `  let g${q} = min(col0 / 4u + ${q}u, p.nq - 1u);
  let t${q} = g${q} / p.c4q;
  let bx${q} = t${q} % p.kw * p.c4q + g${q} % p.c4q;
  let by${q} = t${q} / p.kw;`)
    }
${each2(tm, tn, (i, j) => `  var c${i}_${j} = 0.0;`)}
  let kb = wid.z * p.chunk;
  let steps = min(p.k4, kb + p.chunk) - kb;
  // Counters of k = 4·kb: image n, output row oh, column ow.
  var n = 4u * kb / p.ohw;
  var oh = (4u * kb - n * p.ohw) / p.ow;
  var ow = 4u * kb - n * p.ohw - oh * p.ow;
  for (var x = 0u; x < steps; x++) {
${each(tm, (i) => `    let av${i} = textureLoad(A, vec2u(x, a${i}), 0);`)}
${
      each(4, (s) =>
        `    let px${s} = ow * p.sc;
    let py${s} = min(n, p.N - 1u) * p.hp + oh * p.sh;
${each(tq, (q) => `    let bv${s}_${q} = textureLoad(B, vec2u(px${s} + bx${q}, py${s} + by${q}), 0);`)}
    ow++;
    if (ow == p.ow) {
      ow = 0u;
      oh++;
      if (oh * p.ow == p.ohw) {
        oh = 0u;
        n++;
      }
    }`)
    }
${fma4(tm, tn, (i, s) => `av${i}[${s}]`, (j, s) => `bv${s}_${j >> 2}[${j & 3}]`)}
  }
  let base = (((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * ${wg}u + lid.x) * ${tm * tn / 4}u;
${
      each(tm, (i) =>
        each(tq, (q) =>
          `  textureStore(blk, blockTexel(base + ${i * tq + q}u), vec4f(${
            [0, 1, 2, 3].map((d) =>
              `c${i}_${4 * q + d}`
            ).join(", ")
          }));`))
    }
}`,
  };
});

// part[z, m, ci, tap] = block value of (z, m, column (tap·C⁴/4 + ci/4)·4 + ci % 4), ci < Cin: one invocation
// per split z (g.z), row m (g.y) and column group (g.x, 4 columns); the block layout is texDwKernel's.
const dwScatterKernel = single("conv2d_blocked_tex_dw_out", () => ({
  bindings: [
    { name: "blk", access: "read", texture: "sampled" },
    { name: "part", access: "read_write" },
  ],
  uniforms: {
    M: "u32",
    nq: "u32",
    c4q: "u32",
    cin: "u32",
    kk: "u32",
    tmShift: "u32",
    tnShift: "u32",
    cols: "u32",
    gx: "u32",
    gy: "u32",
    wg: "u32",
  },
  workgroupSize: [WG],
  body: `
${BLOCK_AT}
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u) {
  let m = g.y;
  let gq = g.x;
  if (gq >= p.nq || m >= p.M) { return; }
  let c0 = gq * 4u;
  let v4 = textureLoad(blk, blockTexel(blockAt(m, c0, g.z, p.gx, p.gy, p.tmShift, p.tnShift, p.cols != 0u, p.wg)), 0);
  let tap = gq / p.c4q;
  let ci0 = (gq % p.c4q) * 4u;
  let o = ((g.z * p.M + m) * p.cin + ci0) * p.kk + tap;
  for (var s = 0u; s < 4u; s++) {
    if (ci0 + s < p.cin) { part[o + s * p.kk] = v4[s]; }
  }
}`,
}));

/**
 * Block (TM rows × TN columns per invocation) and lane mapping of a register-blocked GEMM of M×N×K:
 * T×T with T forced by the variant, else 32×32 for big products (~15 s to compile on llvmpipe the first
 * time), 16×16 and 8×8 below; fewer rows when M is small (the input gradient of conv1 has M = 3).
 */
function chooseBlock(
  e: Engine,
  m: number,
  n: number,
  k: number,
  c: BlockedConfig,
): Block {
  const flops = 2 * m * n * k, wg = blockWorkgroup(e);
  const t = c.block ?? (flops >= 2 ** 27 ? 32 : flops >= 2 ** 22 ? 16 : 8);
  const tm = Math.min(t, Math.max(4, 2 ** Math.ceil(Math.log2(m)))), tn = t;
  // Pad less: wg invocations × tm rows (lanes along rows) or × tn columns.
  const padRows = Math.ceil(m / (wg * tm)) * wg * tm * Math.ceil(n / tn) * tn;
  const padCols = Math.ceil(m / tm) * tm * Math.ceil(n / (wg * tn)) * wg * tn;
  return { tm, tn, wg, cols: padCols < padRows };
}

/** A register block: TM × TN per invocation, wg invocations a workgroup, lanes along columns or rows. */
interface Block {
  tm: number;
  tn: number;
  wg: number;
  cols: boolean;
}

/** Workgroups (x, y, z) of an M×N register-blocked GEMM: lanes along columns or rows, z splits. */
function laneGroups(m: number, n: number, b: Block, z = 1): [number, number, number] {
  const { tm, tn, wg, cols } = b;
  return cols
    ? [Math.ceil(n / (tn * wg)), Math.ceil(m / tm), z]
    : [Math.ceil(n / tn), Math.ceil(m / (tm * wg)), z];
}

function lanes(
  e: Engine,
  call: Conv2dCall,
  m: number,
  n: number,
  b: Block,
  z = 1,
) {
  const uniforms = b.cols ? { rmul: 1, rl: 0, cmul: b.wg, cl: 1 } : { rmul: b.wg, rl: 1, cmul: 1, cl: 0 };
  return { uniforms, workgroups: groups(e, call, ...laneGroups(m, n, b, z)) };
}

/**
 * A 1×1 stride-1 convolution whose operands the register-blocked matmul reads as vec4 without copies
 * (H·W, Cin and Cout multiples of 4): it runs as `matmulForward` on the NCHW tensors.
 */
const plainGemm = (g: Conv2dGeometry, c: BlockedConfig) =>
  isGemm(g) && c.matmul1x1 && (g.h * g.w) % 4 === 0 && g.cin % 4 === 0 && g.cout % 4 === 0;

/** The operands of a forward-shaped GEMM (the forward, or one stride phase of the input gradient). */
interface FwdGemm {
  /** Packed weight: M rows of `kh · rowq` vec4. */
  a: Tensor;
  /** Channels-last (N, HP, WP, C⁴) activations. */
  b: Tensor;
  m: number;
  /** Columns: batch · output positions of the pass. */
  n: number;
  batch: number;
  hp: number;
  wp: number;
  c4q: number;
  kh: number;
  rowq: number;
}

/**
 * Whether the GEMM can read its operands through textures: K rows of whole 4-texel steps (C⁴ a multiple
 * of 16: every ResNet-50 convolution but conv1) and textures within the adapter's size.
 */
function texturesFit(e: Engine, c: BlockedConfig, q: FwdGemm): boolean {
  const max = e.limits.maxTextureDimension2D;
  return c.textures && q.kh > 0 && q.rowq > 0 && q.rowq % 4 === 0 && q.kh * q.rowq <= max && q.m <= max &&
    q.wp * q.c4q <= max && q.batch * q.hp <= max;
}

/**
 * Run a forward-shaped GEMM: from textures where {@linkcode texturesFit}, else from the storage buffers.
 * `pos`: how a GEMM column maps to input positions; `epi`: where its output goes and what is applied.
 */
function runFwdGemm(
  e: Engine,
  c: BlockedConfig,
  call: Conv2dCall,
  q: FwdGemm,
  rest: Tensor[],
  pos: Record<"ohw" | "ow" | "sh" | "offh" | "offw", number>,
  epi: Record<"oplane" | "outw" | "os" | "rh" | "rw" | "hasBias" | "hasRes" | "relu", number>,
  info: string,
): void {
  const blk = chooseBlock(e, q.m, q.n, q.kh * q.rowq * 4, c);
  const l = lanes(e, call, q.m, q.n, blk);
  const gemm = { M: q.m, N: q.n, hp: q.hp, c4q: q.c4q, kh: q.kh, rowq: q.rowq, ...pos };
  const [gx, gy] = l.workgroups;
  const out = texturesFit(e, c, q) ? blockTexture(e, gx * gy * blk.wg * blk.tm * blk.tn) : null;
  if (out) {
    const ta = e.texture("conv2d.A", q.kh * q.rowq, q.m);
    const tb = e.texture("conv2d.B", q.wp * q.c4q, q.batch * q.hp);
    fillTexture(e, q.a, ta, 4 * q.kh * q.rowq, q.m);
    fillTexture(e, q.b, tb, 4 * q.wp * q.c4q, q.batch * q.hp);
    e.run(texFwdKernel({ tm: blk.tm, tn: blk.tn, wg: blk.wg, cols: blk.cols }), {
      bindings: [ta, tb, out],
      uniforms: gemm,
      workgroups: l.workgroups,
      info: `${info} ${blk.tm}×${blk.tn} textures`,
    });
    // The residual (the block's shortcut) read from a flat texture.
    const R = epi.hasRes ? flatTexture(e, "conv2d.res", rest[1]) : null;
    // Whole vec4 of y where each 4 columns are 4 aligned values of one of its planes.
    const stride1 = epi.os === 1 && epi.rh === 0 && epi.rw === 0;
    const vec = stride1 && epi.oplane === pos.ohw && epi.outw === pos.ow && pos.ohw % 4 === 0;
    const blocks = {
      M: q.m,
      N: q.n,
      tmShift: Math.log2(blk.tm),
      tnShift: Math.log2(blk.tn),
      cols: blk.cols ? 1 : 0,
      gx,
      ohw: pos.ohw,
      wg: blk.wg,
    };
    const bindings = [out, rest[0], R ?? rest[1], rest[2]];
    const workgroups = groups(e, call, Math.ceil(q.n / 4 / WG), q.m);
    if (vec) {
      const { hasBias, hasRes, relu } = epi;
      e.run(texOutVecKernel({ resTex: R !== null }), {
        bindings,
        uniforms: { ...blocks, hasBias, hasRes, relu },
        workgroups,
        info: `${info} blocks → y (vec4)`,
      });
    } else {
      e.run(texOutKernel({ resTex: R !== null }), {
        bindings,
        uniforms: { ...blocks, ow: pos.ow, ...epi },
        workgroups,
        info: `${info} blocks → y`,
      });
    }
    return;
  }
  e.run(fwdKernel({ tm: blk.tm, tn: blk.tn, wg: blk.wg }), {
    bindings: [q.a, q.b, ...rest],
    uniforms: { ...gemm, wp: q.wp, ...epi, ...l.uniforms },
    workgroups: l.workgroups,
    info: `${info} ${blk.tm}×${blk.tn}`,
  });
}

// ------------------------------------------------------------------------------------------ passes

/**
 * The forward GEMM's taps per kernel row and the channels-last width. The texture GEMM reads K in steps of
 * 4 texels: a row of KW·C⁴/4 texels that is not a multiple of 4 (conv1: 7 taps of one texel) is padded
 * with zero taps up to one, where that adds at most half the FMAs, and xp with columns on the right so
 * that the padded taps read inside it (their products are zeros).
 */
function fwdRow(g: Conv2dGeometry, c: BlockedConfig): { kwp: number; wp: number } {
  const cq = c4(g.cin) / 4, wp = g.w + 2 * g.pad;
  let kwp = g.kw;
  if (c.textures) { while (kwp * cq % 4 !== 0) kwp++; }
  if (2 * kwp > 3 * g.kw) kwp = g.kw;
  return { kwp, wp: Math.max(wp, (g.ow - 1) * g.stride + kwp) };
}

function forward(
  x: Tensor,
  w: Tensor,
  g: Conv2dGeometry,
  o: Conv2dOptions,
  c: BlockedConfig,
  call: Conv2dCall,
): Tensor {
  const e = x.engine;
  const outShape = [g.n, g.cout, g.oh, g.ow];
  if (plainGemm(g, c) && !o.bias && !o.residual && !o.relu) {
    // y[n] = W · x[n]: (Cout, Cin) · (Cin, H·W), no copies.
    return e.scope(() =>
      matmulForward(w.reshape([g.cout, g.cin]), x.reshape([g.n, g.cin, g.h * g.w])).reshape(outShape)
    );
  }
  if (plainGemm(g, c) && c.textures) {
    // With an epilogue (inference's folded batch norm, ReLU, the shortcut): one texture GEMM that applies it
    // as it stores y, where the matmul's choice is a `tex` kernel; no layout copies or scatter.
    const y = e.scope(() =>
      matmulRowEpilogue(w.reshape([g.cout, g.cin]), x.reshape([g.n, g.cin, g.h * g.w]), {
        bias: o.bias ?? undefined,
        residual: o.residual ?? undefined,
        relu: !!o.relu,
      })?.reshape(outShape) ?? null
    );
    if (y) return y;
  }
  const y = e.empty(outShape, "conv2d");
  const cp = c4(g.cin);
  const { kwp, wp: wpp } = fwdRow(g, c);
  const xp = toNhwc(x, g.pad, g.pad, g.pad, g.pad + wpp - (g.w + 2 * g.pad), c.textures);
  const { t: a, temporary } = packedWeight(
    w,
    o.constantWeight,
    `blocked/kw${kwp}`,
    () =>
      packA(
        w,
        g,
        { swap: false, kh0: 0, kw0: 0, t1: g.kh, t2: kwp },
        call,
        c.textures ? flatTexture(e, "conv2d.w", w) : null,
      ),
  );
  const q: FwdGemm = {
    a,
    b: xp,
    m: g.cout,
    n: g.n * g.oh * g.ow,
    batch: g.n,
    hp: g.h + 2 * g.pad,
    wp: wpp,
    c4q: cp / 4,
    kh: g.kh,
    rowq: kwp * cp / 4,
  };
  runFwdGemm(e, c, call, q, [o.bias ?? e.placeholder(), o.residual ?? e.placeholder(), y], {
    ohw: g.oh * g.ow,
    ow: g.ow,
    sh: g.stride,
    offh: 0,
    offw: 0,
  }, {
    oplane: g.oh * g.ow,
    outw: g.ow,
    os: 1,
    rh: 0,
    rw: 0,
    hasBias: o.bias ? 1 : 0,
    hasRes: o.residual ? 1 : 0,
    relu: o.relu ? 1 : 0,
  }, `${call.info} ${call.variant}`);
  xp.dispose();
  if (temporary) a.dispose();
  return y;
}

/** Taps of one stride phase along one axis: first tap k0, count T, and the row offset ch. */
function phase(r: number, s: number, p: number, k: number) {
  const k0 = (r + p) % s;
  const taps = k0 < k ? Math.ceil((k - k0) / s) : 0;
  return { k0, taps, ch: (r + p - k0) / s };
}

/**
 * Zero padding (top, bottom, left, right) of the channels-last dy of the input gradient: phase r covers
 * rows i·s + r, i < ⌈(H − r)/s⌉, and reads dy rows i + ch − taps + 1 … i + ch.
 */
function dxPads(g: Conv2dGeometry): [number, number, number, number] {
  const s = g.stride;
  const pads = (size: number, out: number, k: number) => {
    let lo = 0, hi = 0;
    for (let r = 0; r < s && r < size; r++) {
      const ph = phase(r, s, g.pad, k);
      if (ph.taps === 0) continue;
      lo = Math.max(lo, ph.taps - 1 - ph.ch);
      hi = Math.max(hi, Math.ceil((size - r) / s) - 1 + ph.ch - (out - 1));
    }
    return [lo, hi];
  };
  return [...pads(g.h, g.oh, g.kh), ...pads(g.w, g.ow, g.kw)] as [number, number, number, number];
}

/** The stride phases (rh, rw) of the input gradient: their taps and the rows × columns of dx they cover. */
function dxPhases(g: Conv2dGeometry) {
  const s = g.stride;
  const out = [];
  for (let rh = 0; rh < s && rh < g.h; rh++) {
    for (let rw = 0; rw < s && rw < g.w; rw++) {
      const ph = phase(rh, s, g.pad, g.kh), pw = phase(rw, s, g.pad, g.kw);
      out.push({ rh, rw, ph, pw, hi: Math.ceil((g.h - rh) / s), wi: Math.ceil((g.w - rw) / s) });
    }
  }
  return out;
}

/** Input gradient: one stride-1 correlation per stride phase. */
function backwardInput(dy: Tensor, w: Tensor, g: Conv2dGeometry, c: BlockedConfig, call: Conv2dCall): Tensor {
  const e = dy.engine;
  const xShape = [g.n, g.cin, g.h, g.w];
  if (plainGemm(g, c)) {
    // dx[n] = Wᵀ · dy[n]: (Cin, Cout) · (Cout, H·W).
    return e.scope(() =>
      matmulForward(w.reshape([g.cout, g.cin]), dy.reshape([g.n, g.cout, g.h * g.w]), { transposeA: true })
        .reshape(xShape)
    );
  }
  const dx = e.empty(xShape, "conv2d dx");
  const s = g.stride;
  const [pt, pb, pl, pr] = dxPads(g);
  const dyp = toNhwc(dy, pt, pb, pl, pr, c.textures);
  const cp = c4(g.cout);
  // w read through a flat texture by every phase's packing (one copy).
  const W = c.textures ? flatTexture(e, "conv2d.w", w) : null;
  for (const { rh, rw, ph, pw, hi, wi } of dxPhases(g)) {
    const a = packA(w, g, { swap: true, kh0: ph.k0, kw0: pw.k0, t1: ph.taps, t2: pw.taps }, call, W);
    const q: FwdGemm = {
      a,
      b: dyp,
      m: g.cin,
      n: g.n * hi * wi,
      batch: g.n,
      hp: g.oh + pt + pb,
      wp: g.ow + pl + pr,
      c4q: cp / 4,
      kh: ph.taps,
      rowq: pw.taps * cp / 4,
    };
    runFwdGemm(e, c, call, q, [e.placeholder(), e.placeholder(), dx], {
      ohw: hi * wi,
      ow: wi,
      sh: 1,
      offh: ph.ch - ph.taps + 1 + pt,
      offw: pw.ch - pw.taps + 1 + pl,
    }, {
      oplane: g.h * g.w,
      outw: g.w,
      os: s,
      rh,
      rw,
      hasBias: 0,
      hasRes: 0,
      relu: 0,
    }, `${call.info} phase (${rh},${rw}) ${call.variant}`);
    a.dispose();
  }
  dyp.dispose();
  return dx;
}

/**
 * The weight gradient's GEMM: K = N·OH·OW (K⁴ rounded up to 4; dy read in place when OH·OW % 4 = 0, else
 * copied to dyᵀ), the block, and the split of K: until there are ≥ dwMinGroups workgroups, keeping ≥ 64
 * steps per split and the partials within 64 MiB and one binding, but no split longer than MAX_LOOP_STEPS
 * (the footprint then counts the partials).
 */
function dwPlan(e: Engine, g: Conv2dGeometry, c: BlockedConfig) {
  const cp = c4(g.cin);
  const nk = g.n * g.oh * g.ow, kp = c4(nk);
  const direct = (g.oh * g.ow) % 4 === 0;
  const kk = g.kh * g.kw, nq = kk * cp / 4, ncol = 4 * nq, k4 = kp / 4;
  const blk = chooseBlock(e, g.cout, ncol, kp, c);
  const [gx, gy] = laneGroups(g.cout, ncol, blk);
  const wSize = g.cout * g.cin * kk;
  let splits = Math.min(
    Math.ceil(c.dwMinGroups / (gx * gy)),
    Math.ceil(k4 / 64),
    Math.max(1, Math.floor(Math.min(64 << 20, e.maxBinding) / (4 * wSize))),
  );
  // Textures hold one split's K per row (the adapter's texture width).
  const maxChunk = c.textures ? Math.min(MAX_LOOP_STEPS, e.limits.maxTextureDimension2D) : MAX_LOOP_STEPS;
  splits = Math.max(1, splits, Math.ceil(k4 / maxChunk));
  const chunk = Math.ceil(k4 / splits);
  splits = Math.ceil(k4 / chunk);
  return { nk, kp, direct, kk, nq, ncol, k4, blk, splits, chunk, wSize };
}

/**
 * Whether the weight gradient can read dyᵀ and xp through textures (dyᵀ: one split's K⁴/4 per row, a row
 * per split and output channel; xp: as the forward's B), with its blocks within one binding.
 */
function dwTexturesFit(
  e: Engine,
  g: Conv2dGeometry,
  c: BlockedConfig,
  d: ReturnType<typeof dwPlan>,
): boolean {
  const max = e.limits.maxTextureDimension2D;
  const [gx, gy] = laneGroups(g.cout, d.ncol, d.blk);
  const rows = blockRows(gx * gy * d.splits * d.blk.wg * d.blk.tm * d.blk.tn);
  return c.textures && d.chunk <= max && d.splits * g.cout <= max &&
    (g.w + 2 * g.pad) * c4(g.cin) / 4 <= max && g.n * (g.h + 2 * g.pad) <= max && rows <= max;
}

/** Weight gradient (split-K when the output has few blocks). */
function backwardWeight(
  x: Tensor,
  dy: Tensor,
  g: Conv2dGeometry,
  c: BlockedConfig,
  call: Conv2dCall,
): Tensor {
  const e = x.engine;
  const wShape = [g.cout, g.cin, g.kh, g.kw];
  if (plainGemm(g, c)) {
    // dw = Σ_n dy[n] · x[n]ᵀ: (Cout, H·W) · (H·W, Cin) per image, then the sum over n.
    return e.scope(() => {
      const per = matmulForward(dy.reshape([g.n, g.cout, g.h * g.w]), x.reshape([g.n, g.cin, g.h * g.w]), {
        transposeB: true,
      });
      return (g.n === 1 ? per : reduce("sum", per, { axes: 0 })).reshape(wShape);
    });
  }
  const xp = toNhwc(x, g.pad, g.pad, g.pad, g.pad, c.textures);
  const cp = c4(g.cin), hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  const plan = dwPlan(e, g, c);
  const { nk, kp, direct, kk, nq, ncol, k4, blk, splits, chunk } = plan;
  const { tm, tn } = blk;
  if (dwTexturesFit(e, g, c, plan)) {
    const ta = e.texture("conv2d.dyT", chunk, splits * g.cout);
    e.run(dyTexKernel(), {
      bindings: [dy, ta],
      uniforms: { M: g.cout, ohw: g.oh * g.ow, nk, chunk, rows: splits * g.cout },
      workgroups: groups(e, call, Math.ceil(chunk / 64), splits * g.cout),
      info: `[${dy.shape}] → ${chunk}×${splits * g.cout} texels`,
    });
    const tb = e.texture("conv2d.B", wp * cp / 4, g.n * hp);
    fillTexture(e, xp, tb, wp * cp, g.n * hp);
    xp.dispose();
    const [gx, gy] = laneGroups(g.cout, ncol, blk);
    const out = blockTexture(e, gx * gy * splits * blk.wg * tm * tn)!;
    e.run(texDwKernel({ tm, tn, wg: blk.wg, cols: blk.cols }), {
      bindings: [ta, tb, out],
      uniforms: {
        M: g.cout,
        N: g.n,
        k4,
        chunk,
        nq,
        c4q: cp / 4,
        kw: g.kw,
        ohw: g.oh * g.ow,
        ow: g.ow,
        hp,
        sc: g.stride * cp / 4,
        sh: g.stride,
      },
      workgroups: groups(e, call, gx, gy, splits),
      info: `${call.info} ${call.variant} ${tm}×${tn} splits ${splits} textures`,
    });
    const part = e.empty([splits, ...wShape], "conv2d dw partials");
    e.run(dwScatterKernel(), {
      bindings: [out, part],
      uniforms: {
        M: g.cout,
        nq,
        c4q: cp / 4,
        cin: g.cin,
        kk,
        tmShift: Math.log2(tm),
        tnShift: Math.log2(tn),
        cols: blk.cols ? 1 : 0,
        gx,
        gy,
        wg: blk.wg,
      },
      workgroups: groups(e, call, Math.ceil(nq / WG), g.cout, splits),
      info: `${call.info} dw blocks → partials`,
    });
    return sumSplits(part, wShape);
  }
  let dyt: Tensor | null = null;
  if (!direct) {
    dyt = e.empty([g.cout, kp], "conv2d dyᵀ");
    e.run(dyTKernel(), {
      bindings: [dy, dyt],
      uniforms: { cout: g.cout, ohw: g.oh * g.ow, nk, kp, total: g.cout * kp },
      workgroups: grid(g.cout * kp, WG),
      info: `[${dy.shape}] → [${dyt.shape}]`,
    });
  }
  const ptab = e.empty([kp + kp / 4], "conv2d dw offsets");
  e.run(pTableKernel(), {
    bindings: [ptab],
    uniforms: {
      nk,
      ohw: g.oh * g.ow,
      ow: g.ow,
      hp,
      wp,
      s: g.stride,
      c4q: cp / 4,
      kp,
      cout: g.cout,
      direct: direct ? 1 : 0,
      total: kp + kp / 4,
    },
    workgroups: grid(kp + kp / 4, WG),
    info: `${kp} + ${kp / 4} offsets`,
  });
  const part = e.empty([splits, ...wShape], "conv2d dw partials");
  const l = lanes(e, call, g.cout, ncol, blk, splits);
  e.run(dwKernel({ tm, tn, wg: blk.wg }), {
    bindings: [dyt ?? dy, xp, ptab, part],
    uniforms: {
      M: g.cout,
      k4,
      kp,
      lda: direct ? g.oh * g.ow / 4 : k4,
      nq,
      c4q: cp / 4,
      cin: g.cin,
      kw: g.kw,
      kk,
      wp,
      chunk,
      ...l.uniforms,
    },
    workgroups: l.workgroups,
    info: `${call.info} ${call.variant} ${blk.tm}×${blk.tn} splits ${splits}`,
  });
  xp.dispose();
  dyt?.dispose();
  ptab.dispose();
  return sumSplits(part, wShape);
}

// ------------------------------------------------------------------------------------------ footprint

/**
 * The largest binding and workgroup count of a pass: x, y, w (ioElements), the channels-last copies (x
 * padded by p, dy by the phases' pads), the packed weight, the weight gradient's dyᵀ, offset table and
 * partials, and for 1×1 convolutions through `matmulForward` the per-image weight gradients; along z the
 * split K, or the batch of `matmulForward`.
 */
function footprint(e: Engine, pass: Conv2dPass, g: Conv2dGeometry, c: BlockedConfig): Conv2dFootprint {
  const io = ioElements(g);
  const gemmBatch = plainGemm(g, c) ? g.n : 0;
  if (pass === "fwd") {
    const cp = c4(g.cin), N = g.n * g.oh * g.ow, { kwp, wp } = fwdRow(g, c);
    const xp = g.n * (g.h + 2 * g.pad) * wp * cp;
    const blk = chooseBlock(e, g.cout, N, g.kh * kwp * cp, c);
    return {
      elements: Math.max(io, xp, g.cout * g.kh * kwp * cp),
      groups: Math.max(...laneGroups(g.cout, N, blk), gemmBatch),
    };
  }
  if (pass === "dx") {
    const cp = c4(g.cout), [pt, pb, pl, pr] = dxPads(g);
    const dyp = g.n * (g.oh + pt + pb) * (g.ow + pl + pr) * cp;
    let most = gemmBatch;
    for (const { ph, pw, hi, wi } of dxPhases(g)) {
      const N = g.n * hi * wi;
      most = Math.max(most, ...laneGroups(g.cin, N, chooseBlock(e, g.cin, N, ph.taps * pw.taps * cp, c)));
    }
    return { elements: Math.max(io, dyp, g.cin * g.kh * g.kw * cp), groups: most };
  }
  // The matmul path's per-image weight gradients (N, Cout, Cin), or the GEMM's operands and partials.
  if (gemmBatch) return { elements: Math.max(io, g.n * g.cout * g.cin), groups: g.n };
  const d = dwPlan(e, g, c);
  const xp = g.n * (g.h + 2 * g.pad) * (g.w + 2 * g.pad) * c4(g.cin);
  return {
    elements: Math.max(io, xp, d.direct ? 0 : g.cout * d.kp, d.kp + d.kp / 4, d.splits * d.wSize),
    groups: Math.max(...laneGroups(g.cout, d.ncol, d.blk, d.splits)),
  };
}

// ------------------------------------------------------------------------------------------ strategy

/**
 * The `blocked` strategy (see the module comment); params `t8` / `t16` / `t32`, `split<N>`, `nomatmul`.
 *
 * @example
 * ```ts
 * const c = blocked.config(["t16", "nomatmul"]); // { block: 16, dwMinGroups: 16, matmul1x1: false }
 * ```
 */
export const blocked: Conv2dStrategy<BlockedConfig> = {
  config(params) {
    const c: BlockedConfig = { dwMinGroups: 16, matmul1x1: true, textures: true };
    for (const part of params) {
      const split = splitParam(part);
      if (part === "t8" || part === "t16" || part === "t32") c.block = Number(part.slice(1)) as 8 | 16 | 32;
      else if (part === "nomatmul") c.matmul1x1 = false;
      else if (part === "notex") c.textures = false;
      else if (split !== undefined) c.dwMinGroups = split;
      else {throw new RangeError(
          `unknown parameter "${part}" (blocked takes t8, t16, t32, split<N>, nomatmul, notex)`,
        );}
    }
    return c;
  },
  unsupported: () => null,
  footprint,
  forward,
  backwardInput,
  backwardWeight,
};
