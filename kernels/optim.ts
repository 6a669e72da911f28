/**
 * Optimisation: Adam (as `torch.optim.Adam`, L2 weight decay), global gradient-norm clipping (as
 * `torch.nn.utils.clip_grad_norm_`) and the StepLR schedule.
 *
 * One Adam step records, per parameter tensor, one fused dispatch that reads g, θ, m, v and writes θ, m, v
 * in place (θ, m, v are overwritten; gradients are only read). Tensors larger than one storage binding
 * (e.g. the 2048 × 19699 gene head, 161 MB > 128 MiB on llvmpipe) are processed in aligned element ranges,
 * one dispatch per range. Clipping needs no readback: per-tensor sums of squares go to a partials buffer,
 * one workgroup reduces them to the norm and the clip factor, and the Adam kernel reads the factor from
 * that 1-element buffer. Step-dependent scalars (lr / (1 − β1ᵗ), √(1 − β2ᵗ)) live in one small storage
 * buffer rewritten once per step, so uniforms and bind groups stay cached across steps. Where the kernels
 * read textures (below), that buffer and the clip factor are copied into one small texture as well.
 *
 * On software adapters both passes read their large operands through textures: whole 4 096-float rows
 * of each range are copied (a `copyBufferToTexture`, no kernel) into 4 MiB textures, chunk by chunk, and
 * the kernels fetch texels; the tail of a range shorter than one row, and ranges that are not whole vec4s,
 * take the storage kernels. Mesa's llvmpipe turns each storage-buffer load into a loop over the SIMD lanes
 * and a texel fetch into one vector gather, so this halves the optimizer's time there (the stores still go
 * to the buffers). The arithmetic is the same, and so are the bits. Elsewhere storage reads are the
 * default; `reads` forces either.
 *
 * References: Kingma & Ba, https://arxiv.org/abs/1412.6980; PyTorch `torch/optim/adam.py` (`_single_tensor_adam`),
 * `torch/nn/utils/clip_grad.py`, `torch/optim/lr_scheduler.py` (`StepLR`).
 *
 * @module
 */
import { zeroGrad } from "../engine/autograd.ts";
import { type Engine, type EngineTexture, grid, type TensorRange } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import { shapeSize, type Tensor } from "../engine/tensor.ts";
import { chunkSum, LINEAR_ID, linearEntry, stridedSum, WORKGROUP_ID, workgroupEntry } from "./_wgsl.ts";

const WG = 256;
/** Elements (vec4s where the range allows) one workgroup of the sum-of-squares pass reduces (32 per thread). */
const CHUNK = 8192;
const EW = 128;

// part[base + w] = Σ x[i]² over i ∈ [w·CHUNK, min((w+1)·CHUNK, n)) of this (range of a) gradient; with
// `vec`, x is read as vec4 (n, CHUNK and i count vec4s: 4× fewer loads, which is what costs on llvmpipe).
// x: [n] (a range); part: [total partials]
const sumSquaresKernel = variants("grad_sumsq_partial", (p: { vec: boolean }) => ({
  bindings: [{ name: "x", access: "read", type: p.vec ? "vec4<f32>" : "f32" }, {
    name: "part",
    access: "read_write",
  }],
  uniforms: { n: "u32", parts: "u32", base: "u32" },
  workgroupSize: [WG],
  body: `
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.parts) { return; }   // uniform per workgroup
  ${chunkSum(WG, CHUNK, "p.n", p.vec ? "let v = dot(x[i], x[i]);" : "let v = x[i] * x[i];")}
  if (t == 0u) { part[p.base + w] = sh[0]; }
}`,
}));

// The same partial sums with x read through a texture (rows of `width` texels, width a power of two,
// width = 1 << shift): vec4 element i of the chunk is texel (i & (width − 1), i >> shift). On llvmpipe a
// texel fetch is a vector gather where a storage load is a loop over the SIMD lanes (Mesa 22's
// lp_bld_nir_soa), so reading through a texture costs ~1/3 as much even counting the copy into it.
// X: texture; part: [total partials]; n: vec4s in the chunk
const sumSquaresTexKernel = single("grad_sumsq_partial_tex", () => ({
  bindings: [{ name: "X", access: "read", texture: "sampled" }, { name: "part", access: "read_write" }],
  uniforms: { n: "u32", parts: "u32", base: "u32", shift: "u32" },
  workgroupSize: [WG],
  body: `
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.parts) { return; }   // uniform per workgroup
  let mask = (1u << p.shift) - 1u;
  ${
    chunkSum(
      WG,
      CHUNK,
      "p.n",
      "let xi = textureLoad(X, vec2u(i & mask, i >> p.shift), 0); let v = dot(xi, xi);",
    )
  }
  if (t == 0u) { part[p.base + w] = sh[0]; }
}`,
}));

// norm[0] = √Σ part; scale[0] = min(1, maxNorm / (norm + 1e-6)).   part: [parts]; norm, scale: [1]
const normKernel = single("grad_norm_final", () => ({
  bindings: [
    { name: "part", access: "read" },
    { name: "norm", access: "read_write" },
    { name: "scale", access: "read_write" },
  ],
  uniforms: { parts: "u32", maxNorm: "f32" },
  workgroupSize: [WG],
  body: `
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${stridedSum(WG, "p.parts", "part[k]")}
  if (t == 0u) {
    let total = sqrt(sh[0]);
    norm[0] = total;
    scale[0] = min(1.0, p.maxNorm / (total + 1e-6));
  }
}`,
}));

// Adam, in place, following torch's _single_tensor_adam (lerp for m, addcmul for v, addcdiv for θ):
//   g ← g·clip + wd·θ;  m ← m + (1 − β1)(g − m);  v ← β2·v + (1 − β2)·g²
//   θ ← θ − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)
// th, gr (the gradient), m, v: [n] (the same range of each); hp: [params, 4] = (lr / (1 − β1ᵗ), √(1 − β2ᵗ),
// 0, 0) per parameter; cs: [1] the clip factor.
const adamKernel = variants("adam_step", (p: { vec: boolean }) => {
  const type = p.vec ? "vec4<f32>" : "f32";
  return {
    bindings: [
      { name: "th", access: "read_write", type },
      { name: "gr", access: "read", type },
      { name: "m", access: "read_write", type },
      { name: "v", access: "read_write", type },
      { name: "hp", access: "read" },
      { name: "cs", access: "read" },
    ],
    uniforms: { n: "u32", row: "u32", omb1: "f32", b2: "f32", omb2: "f32", eps: "f32", wd: "f32" },
    workgroupSize: [EW],
    body: `
${linearEntry(EW)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let stepSize = hp[4u * p.row];
  let bc2Sqrt = hp[4u * p.row + 1u];
  let theta = th[i];
  let gi = gr[i] * cs[0] + p.wd * theta;
  let m0 = m[i];
  let mi = m0 + p.omb1 * (gi - m0);
  let vi = p.b2 * v[i] + p.omb2 * gi * gi;
  m[i] = mi;
  v[i] = vi;
  th[i] = theta - stepSize * (mi / (sqrt(vi) / bc2Sqrt + p.eps));
}`,
  };
});

/** Texels per row of the hyper-parameter texture (16 × 16 bytes: WebGPU's 256-byte copy rows). */
const HP_WIDTH = 16;
/** WGSL: texel `row` of the hyper-parameter texture `HP` (hp's floats 4·row … 4·row + 3). */
const hyperTexel = (row: string) =>
  `textureLoad(HP, vec2u((${row}) & ${HP_WIDTH - 1}u, (${row}) >> ${Math.log2(HP_WIDTH)}u), 0)`;

// Adam as adamKernel (vec), with θ, g, m, v read through textures (rows of p.width texels, copied from
// the same range of each buffer) and θ, m, v written to their buffers; one texel per invocation. The step
// scalars and the clip factor come from the texture HP too ({@linkcode hyperTexel}): on llvmpipe a storage
// load is a loop over the SIMD lanes even where every lane reads the same word, and the three scalar
// loads of hp and cs cost ~30 % of a raw kernel over 8 Mi floats, ~8 % of this kernel over 49 M parameters.
// th, m, v: [rows · width] vec4 (a range); TH, G, M, V: textures; HP: the hyper-parameter texture
const adamTexKernel = single("adam_step_tex", () => ({
  bindings: [
    { name: "th", access: "read_write", type: "vec4<f32>" },
    { name: "m", access: "read_write", type: "vec4<f32>" },
    { name: "v", access: "read_write", type: "vec4<f32>" },
    { name: "TH", access: "read", texture: "sampled" },
    { name: "G", access: "read", texture: "sampled" },
    { name: "M", access: "read", texture: "sampled" },
    { name: "V", access: "read", texture: "sampled" },
    { name: "HP", access: "read", texture: "sampled" },
  ],
  uniforms: {
    rows: "u32",
    width: "u32",
    row: "u32",
    clipRow: "u32",
    omb1: "f32",
    b2: "f32",
    omb2: "f32",
    eps: "f32",
    wd: "f32",
  },
  workgroupSize: [EW],
  body: `
@compute @workgroup_size(${EW}) fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.xy;
  if (c.x >= p.width || c.y >= p.rows) { return; }
  let i = c.y * p.width + c.x;
  let h = ${hyperTexel("p.row")};
  let stepSize = h.x;
  let bc2Sqrt = h.y;
  let theta = textureLoad(TH, c, 0);
  let gi = textureLoad(G, c, 0) * ${hyperTexel("p.clipRow")}.x + p.wd * theta;
  let m0 = textureLoad(M, c, 0);
  let mi = m0 + p.omb1 * (gi - m0);
  let vi = p.b2 * textureLoad(V, c, 0) + p.omb2 * gi * gi;
  m[i] = mi;
  v[i] = vi;
  th[i] = theta - stepSize * (mi / (sqrt(vi) / bc2Sqrt + p.eps));
}`,
}));

/** Where an optimizer kernel reads its large operands: storage buffers, or textures filled by a copy. */
export type OptimReads = "storage" | "texture";

/** Texels per texture row for {@linkcode OptimReads} `"texture"` (4 096 floats, 16 KiB) by default. */
const TEX_WIDTH = 1024;
/** Texture rows per chunk (1 Mi floats, 4 MiB per texture) by default. */
const TEX_ROWS = 256;

/** The texture layout of texture reads: texels per row (a power of two ≥ 16) and rows per chunk. */
export interface TextureLayout {
  width: number;
  rows: number;
}

/**
 * Texture reads on software adapters (where a storage load is a loop over SIMD lanes and a texel fetch a
 * vector gather), storage reads elsewhere; `"texture"` or `"storage"` forces one.
 */
function readsOn(e: Engine, reads: OptimReads | undefined, what: string): OptimReads {
  if (reads !== undefined && reads !== "storage" && reads !== "texture") {
    throw new RangeError(`Cannot ${what}: reads must be "storage" or "texture", current value is ${reads}`);
  }
  return reads ?? (e.adapterInfo.software ? "texture" : "storage");
}

function checkLayout(l: TextureLayout, what: string): TextureLayout {
  if (!(Number.isInteger(Math.log2(l.width)) && l.width >= 16 && Number.isInteger(l.rows) && l.rows >= 1)) {
    throw new RangeError(
      `Cannot ${what}: textureLayout must have a width that is a power of two ≥ 16 and rows ≥ 1, ` +
        `current value is ${l.width} × ${l.rows}`,
    );
  }
  return l;
}

/**
 * Split the range `[start, start + count)` for texture reads: chunks of whole texture rows
 * (`[offset, rows]`, at most `layout.rows` rows each) and the tail shorter than one row that storage
 * kernels take (`[offset, count]`, or null). Only whole vec4 ranges use textures: others are all tail.
 */
function textureChunks(
  start: number,
  count: number,
  layout: TextureLayout,
): { chunks: [number, number][]; tail: [number, number] | null } {
  const rowLen = layout.width * 4;
  const full = vec4Range(start, count) ? Math.floor(count / rowLen) : 0;
  const chunks: [number, number][] = [];
  for (let r = 0; r < full; r += layout.rows) {
    chunks.push([start + r * rowLen, Math.min(layout.rows, full - r)]);
  }
  const done = full * rowLen;
  return { chunks, tail: done < count ? [start + done, count - done] : null };
}

/** Whether a range of `count` elements starting at element `start` can be read as vec4. */
const vec4Range = (start: number, count: number) => count % 4 === 0 && start % 4 === 0;

/**
 * Element ranges `[start, count]` that each fit one storage binding and start at an aligned offset;
 * `maxElements` caps the range (tests use it to exercise the range path on small tensors).
 */
export function bindingRanges(engine: Engine, n: number, maxElements = Infinity): [number, number][] {
  const align = engine.offsetAlign / 4;
  const cap = Math.min(engine.maxBinding / 4, maxElements);
  const per = Math.max(align, Math.floor(cap / align) * align);
  if (n <= per) return [[0, n]];
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += per) out.push([s, Math.min(per, n - s)]);
  return out;
}

function bind(t: Tensor, start: number, count: number, whole: boolean): Tensor | TensorRange {
  return whole ? t : { tensor: t, offset: start, size: count };
}

/** Options for {@linkcode gradNorm}. */
export interface GradNormOptions {
  /** Largest element range bound at once (default: one storage binding). */
  maxChunkElements?: number;
  /** Read the gradients through textures or storage (default: textures on software adapters). */
  reads?: OptimReads;
  /** Texture rows and chunks for `reads: "texture"` (default 1 024 texels × 256 rows); for tests. */
  textureLayout?: TextureLayout;
}

/**
 * The global L2 norm of `grads` and the clip factor `min(1, maxNorm / (norm + 1e-6))`, both left on the GPU
 * (`norm`: `[]`, `scale`: `[1]`), as `torch.nn.utils.clip_grad_norm_` computes them. The gradients are not
 * modified; {@linkcode Adam.step} applies the factor.
 *
 * @example
 * ```ts
 * const { norm, scale } = gradNorm([...grads.values()], 1.0);
 * console.log((await norm.toArray())[0]);
 * ```
 */
export function gradNorm(
  grads: readonly Tensor[],
  maxNorm: number,
  options: GradNormOptions = {},
): { norm: Tensor; scale: Tensor } {
  if (grads.length === 0) {
    throw new RangeError("Cannot compute a gradient norm: current value has no gradients");
  }
  const e = grads[0].engine;
  const layout = checkLayout(
    options.textureLayout ?? { width: TEX_WIDTH, rows: TEX_ROWS },
    "compute a gradient norm",
  );
  const textures = readsOn(e, options.reads, "compute a gradient norm") === "texture";
  // Each pass sums one storage range, or one chunk of whole texture rows, into its own partials.
  const plan: (
    & { g: Tensor; base: number; parts: number }
    & (
      | { start: number; count: number; whole: boolean; vec: boolean }
      | { offset: number; rows: number }
    )
  )[] = [];
  let total = 0;
  const storage = (g: Tensor, start: number, count: number, whole: boolean) => {
    const vec = vec4Range(start, count);
    const parts = Math.ceil((vec ? count / 4 : count) / CHUNK);
    plan.push({ g, start, count, whole, parts, base: total, vec });
    total += parts;
  };
  for (const g of grads) {
    const rs = bindingRanges(e, g.size, options.maxChunkElements);
    for (const [start, count] of rs) {
      if (count === 0) continue;
      if (!textures) {
        storage(g, start, count, rs.length === 1);
        continue;
      }
      const { chunks, tail } = textureChunks(start, count, layout);
      for (const [offset, rows] of chunks) {
        const parts = Math.ceil((rows * layout.width) / CHUNK);
        plan.push({ g, offset, rows, parts, base: total });
        total += parts;
      }
      if (tail) storage(g, tail[0], tail[1], rs.length === 1 && chunks.length === 0);
    }
  }
  const part = e.empty([Math.max(total, 1)], "grad sumsq partials");
  const tex = plan.some((q) => "rows" in q) ? e.texture("optim.G", layout.width, layout.rows) : null;
  for (const q of plan) {
    if ("rows" in q) {
      e.copyToTexture(q.g, tex!, q.offset, q.rows);
      e.run(sumSquaresTexKernel(), {
        bindings: [tex!, part],
        uniforms: { n: q.rows * layout.width, parts: q.parts, base: q.base, shift: Math.log2(layout.width) },
        workgroups: grid(q.parts, 1),
        info: `[${q.g.shape}] @${q.offset}, ${q.rows} rows`,
      });
      continue;
    }
    const { g, start, count, whole, parts, base, vec } = q;
    e.run(sumSquaresKernel({ vec }), {
      bindings: [bind(g, start, count, whole), part],
      uniforms: { n: vec ? count / 4 : count, parts, base },
      workgroups: grid(parts, 1),
      info: `[${g.shape}] @${start}+${count}`,
    });
  }
  const norm = e.empty([], "grad norm");
  const scale = e.empty([1], "clip scale");
  e.run(normKernel(), {
    bindings: [part, norm, scale],
    uniforms: { parts: total, maxNorm },
    workgroups: [1],
    info: `[${total}]`,
  });
  part.dispose();
  return { norm, scale };
}

/** Adam hyper-parameters (defaults as torch.optim.Adam). */
export interface AdamOptions {
  /** Learning rate (default 1e-3); may be changed between steps (see {@linkcode StepLR}). */
  lr?: number;
  betas?: readonly [number, number];
  eps?: number;
  /** L2 penalty added to the gradient, `g + wd·θ` (not decoupled as in AdamW). Default 0. */
  weightDecay?: number;
  /** Largest element range one dispatch binds (default: one storage binding); for tests. */
  maxChunkElements?: number;
  /**
   * Read θ, g, m and v through textures or storage (default: textures on software adapters, where that
   * is ~2× faster; the same bits either way).
   */
  reads?: OptimReads;
  /** Texture rows and chunks for `reads: "texture"` (default 1 024 texels × 256 rows); for tests. */
  textureLayout?: TextureLayout;
}

/** Options for {@linkcode Adam.step}. */
export interface AdamStepOptions {
  /** Clip the global gradient norm to this value first (torch's `max_norm`); off when absent. */
  clipNorm?: number;
}

/** A plain array with its shape: one entry of an optimizer state dict. */
export interface StateEntry {
  data: Float32Array;
  shape: number[];
}

interface ParamState {
  step: number;
  m: Tensor;
  v: Tensor;
}

/**
 * Adam exactly as `torch.optim.Adam(params, lr, betas, eps, weight_decay)` (no amsgrad, not maximize),
 * updating the parameter tensors in place. Parameters without a gradient in a step are skipped and their
 * step count does not advance, as in PyTorch.
 *
 * @example
 * ```ts
 * const opt = new Adam(params, { lr: 1e-4, weightDecay: 1e-5 });
 * const norm = opt.step(grads, { clipNorm: 1.0 }); // grads: Map<name, Tensor>; norm: [] before clipping
 * // or, PyTorch style, with parameters' `.grad` from `await backward(loss)`:
 * const sgd = new Adam([w, b], { lr: 1e-5, weightDecay: 1e-4 });
 * sgd.step();
 * sgd.zeroGrad();
 * ```
 */
export class Adam {
  lr: number;
  readonly betas: readonly [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly maxChunkElements: number;
  readonly reads: OptimReads;
  readonly textureLayout: TextureLayout;
  readonly #params: Map<string, Tensor>;
  readonly #row = new Map<string, number>();
  readonly #state = new Map<string, ParamState>();
  readonly #engine: Engine;
  #hp: Tensor | null = null;
  #one: Tensor | null = null;

  constructor(params: Map<string, Tensor> | Iterable<Tensor>, options: AdamOptions = {}) {
    if (!(params instanceof Map)) params = new Map([...params].map((t, i) => [String(i), t]));
    if (params.size === 0) throw new RangeError("Cannot create Adam: current value has no parameters");
    this.#params = new Map(params);
    let i = 0;
    for (const name of params.keys()) this.#row.set(name, i++);
    this.#engine = params.values().next().value!.engine;
    this.lr = options.lr ?? 1e-3;
    this.betas = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0;
    this.maxChunkElements = options.maxChunkElements ?? Infinity;
    this.reads = readsOn(this.#engine, options.reads, "create Adam");
    this.textureLayout = checkLayout(
      options.textureLayout ?? { width: TEX_WIDTH, rows: TEX_ROWS },
      "create Adam",
    );
    for (
      const [name, v] of [["lr", this.lr], ["eps", this.eps], ["weightDecay", this.weightDecay]] as const
    ) {
      if (!(v >= 0)) throw new RangeError(`Cannot create Adam: ${name} must be ≥ 0, current value is ${v}`);
    }
    for (const b of this.betas) {
      if (!(b >= 0 && b < 1)) {
        throw new RangeError(`Cannot create Adam: betas must be in [0, 1), current value is ${b}`);
      }
    }
  }

  /** Release and clear every parameter's `.grad` (PyTorch's `optimizer.zero_grad(set_to_none=True)`). */
  zeroGrad(): void {
    zeroGrad(this.#params.values());
  }

  /** Steps taken by parameter `name` (0 before its first gradient). */
  stepCount(name: string): number {
    return this.#state.get(name)?.step ?? 0;
  }

  /**
   * One update of every parameter that has a gradient in `grads` (keyed by parameter name). Records the
   * dispatches and returns without waiting. With `clipNorm`, returns the global gradient norm before
   * clipping as a tensor `[]` (owned by the caller), else `null`.
   */
  step(grads?: Map<string, Tensor> | AdamStepOptions, options: AdamStepOptions = {}): Tensor | null {
    if (!(grads instanceof Map)) {
      // PyTorch style: each parameter's `.grad` (set by `backward(loss)`).
      options = grads ?? options;
      grads = new Map();
      for (const [name, p] of this.#params) if (p.grad && !p.grad.disposed) grads.set(name, p.grad);
    }
    const e = this.#engine;
    const todo: [string, Tensor, Tensor][] = [];
    for (const [name, g] of grads) {
      const th = this.#params.get(name);
      if (!th) throw new RangeError(`Cannot step Adam: gradient "${name}" has no parameter of that name`);
      if (g.shape.length !== th.shape.length || g.shape.some((d, i) => d !== th.shape[i])) {
        throw new RangeError(
          `Cannot step Adam: gradient of "${name}" has shape [${g.shape}], the parameter has [${th.shape}]`,
        );
      }
      todo.push([name, th, g]);
    }
    if (todo.length === 0) return null;

    let norm: Tensor | null = null;
    let scale: Tensor;
    if (options.clipNorm !== undefined) {
      ({ norm, scale } = gradNorm(todo.map(([, , g]) => g), options.clipNorm, {
        maxChunkElements: this.maxChunkElements,
        reads: this.reads,
        textureLayout: this.textureLayout,
      }));
    } else {
      scale = this.#one ??= e.tensor([1], [1]).keep();
    }

    // Per-parameter step scalars, computed in float64 like torch's Python floats.
    const [b1, b2] = this.betas;
    // Four floats per parameter, then the clip factor's texel (copied in on the GPU), in whole rows of the
    // hyper-parameter texture.
    const hpRows = Math.ceil((this.#params.size + 1) / HP_WIDTH);
    const hp = new Float32Array(hpRows * HP_WIDTH * 4);
    for (const [name, th] of todo) {
      let st = this.#state.get(name);
      if (!st) {
        st = {
          step: 0,
          m: e.zeros(th.shape, `${name}.exp_avg`).keep(),
          v: e.zeros(th.shape, `${name}.exp_avg_sq`).keep(),
        };
        this.#state.set(name, st);
      }
      st.step++;
      const row = this.#row.get(name)!;
      hp[4 * row] = this.lr / (1 - b1 ** st.step);
      hp[4 * row + 1] = Math.sqrt(1 - b2 ** st.step);
    }
    this.#writeHyper(hp);

    const { width, rows: maxRows } = this.textureLayout;
    const texture = this.reads === "texture";
    const tex = (role: string) => e.texture(`optim.${role}`, width, maxRows);
    const clipRow = this.#params.size;
    let HP: EngineTexture | null = null;
    if (texture) {
      e.copy(scale, this.#hp!, { dstOffset: 4 * clipRow, size: 1 });
      HP = e.texture("optim.HP", HP_WIDTH, hpRows);
      e.copyToTexture(this.#hp!, HP);
    }
    const uniforms = { omb1: 1 - b1, b2, omb2: 1 - b2, eps: this.eps, wd: this.weightDecay };
    for (const [name, th, g] of todo) {
      const { m, v } = this.#state.get(name)!;
      const row = this.#row.get(name)!;
      const rs = bindingRanges(e, th.size, this.maxChunkElements);
      for (const [rangeStart, rangeCount] of rs) {
        if (rangeCount === 0) continue;
        let storage: [number, number] | null = [rangeStart, rangeCount];
        let whole = rs.length === 1;
        if (texture) {
          const { chunks, tail } = textureChunks(rangeStart, rangeCount, this.textureLayout);
          for (const [offset, rows] of chunks) {
            const ts = [th, g, m, v].map((t, k) => {
              const T = tex(["TH", "G", "M", "V"][k]);
              e.copyToTexture(t, T, offset, rows);
              return T;
            });
            const r = (t: Tensor) => bind(t, offset, rows * width * 4, false);
            e.run(adamTexKernel(), {
              bindings: [r(th), r(m), r(v), ...ts, HP!],
              uniforms: { rows, width, row, clipRow, ...uniforms },
              workgroups: [Math.ceil(width / EW), rows, 1],
              info: `${name} [${th.shape}] @${offset}, ${rows} rows`,
            });
          }
          storage = tail;
          whole &&= chunks.length === 0;
        }
        if (!storage) continue;
        const [start, count] = storage;
        const vec = vec4Range(start, count);
        e.run(adamKernel({ vec }), {
          bindings: [
            bind(th, start, count, whole),
            bind(g, start, count, whole),
            bind(m, start, count, whole),
            bind(v, start, count, whole),
            this.#hp!,
            scale,
          ],
          uniforms: { n: vec ? count / 4 : count, row, ...uniforms },
          workgroups: grid(vec ? count / 4 : count, EW),
          info: `${name} [${th.shape}] @${start}+${count}`,
        });
      }
    }
    if (norm) scale.dispose();
    return norm;
  }

  // Rewrite the step-scalar buffer. Work recorded earlier may still read it: submit that first, so the
  // write lands after it in queue order (as engine.tensor does for uploads).
  #writeHyper(hp: Float32Array): void {
    const e = this.#engine;
    if (!this.#hp) {
      this.#hp = e.tensor(hp, [hp.length]).keep();
      return;
    }
    e.flush();
    e.device.queue.writeBuffer(this.#hp.buffer, 0, hp.buffer as ArrayBuffer, hp.byteOffset, hp.byteLength);
  }

  /**
   * The optimizer state as plain arrays, keyed as torch's per-parameter state: `<name>.step` (shape `[]`),
   * `<name>.exp_avg` and `<name>.exp_avg_sq` for every parameter that has taken a step. Hyper-parameters
   * and the learning rate are not included (the schedule owns the lr).
   */
  async stateDict(): Promise<Map<string, StateEntry>> {
    const out = new Map<string, StateEntry>();
    for (const [name, st] of this.#state) {
      out.set(`${name}.step`, { data: new Float32Array([st.step]), shape: [] });
      out.set(`${name}.exp_avg`, { data: await st.m.toArray(), shape: [...st.m.shape] });
      out.set(`${name}.exp_avg_sq`, { data: await st.v.toArray(), shape: [...st.v.shape] });
    }
    return out;
  }

  /** Restore a state from {@linkcode stateDict}; later steps continue exactly as the saved optimizer would. */
  loadStateDict(state: Map<string, StateEntry>): void {
    const e = this.#engine;
    const names = new Set<string>();
    for (const key of state.keys()) {
      const name = key.replace(/\.(step|exp_avg|exp_avg_sq)$/, "");
      if (name === key || !this.#params.has(name)) {
        throw new RangeError(`Cannot load Adam state: key "${key}" names no parameter of this optimizer`);
      }
      names.add(name);
    }
    const loaded = new Map<string, ParamState>();
    for (const name of names) {
      const th = this.#params.get(name)!;
      const get = (suffix: string, shape: readonly number[]) => {
        const s = state.get(`${name}.${suffix}`);
        if (!s) throw new RangeError(`Cannot load Adam state: "${name}.${suffix}" is missing`);
        const same = s.shape.length === shape.length && s.shape.every((d, i) => d === shape[i]);
        if (!same || s.data.length !== shapeSize(shape)) {
          throw new RangeError(
            `Cannot load Adam state: "${name}.${suffix}" has shape [${s.shape}], expected [${shape}]`,
          );
        }
        return s.data;
      };
      const step = get("step", [])[0];
      const m = get("exp_avg", th.shape);
      const v = get("exp_avg_sq", th.shape);
      loaded.set(name, { step, m: e.tensor(m, th.shape).keep(), v: e.tensor(v, th.shape).keep() });
    }
    for (const st of this.#state.values()) {
      st.m.dispose();
      st.v.dispose();
    }
    this.#state.clear();
    for (const [k, v] of loaded) this.#state.set(k, v);
  }

  /** Release the optimizer's GPU state (the parameters stay). */
  dispose(): void {
    for (const st of this.#state.values()) {
      st.m.dispose();
      st.v.dispose();
    }
    this.#state.clear();
    this.#hp?.dispose();
    this.#one?.dispose();
    this.#hp = this.#one = null;
  }
}

/**
 * Step decay of the learning rate, as `torch.optim.lr_scheduler.StepLR`: the lr of epoch `e` is
 * `lr0 · γ^⌊e / stepSize⌋`. Call {@linkcode StepLR.step} once at the end of each epoch.
 *
 * @example
 * ```ts
 * const sched = new StepLR(opt, { stepSize: 10, gamma: 0.5 });
 * for (let epoch = 0; epoch < 50; epoch++) { train(opt); sched.step(); }
 * ```
 */
export class StepLR {
  readonly baseLr: number;
  readonly stepSize: number;
  readonly gamma: number;
  /** Epochs completed. */
  epoch = 0;

  constructor(readonly optimizer: { lr: number }, options: { stepSize?: number; gamma?: number } = {}) {
    this.baseLr = optimizer.lr;
    this.stepSize = options.stepSize ?? 10;
    this.gamma = options.gamma ?? 0.5;
    if (!(Number.isInteger(this.stepSize) && this.stepSize > 0)) {
      throw new RangeError(
        `Cannot create StepLR: stepSize must be a positive integer, current value is ${this.stepSize}`,
      );
    }
  }

  /** The learning rate of epoch `epoch`. */
  lrAt(epoch: number): number {
    return this.baseLr * this.gamma ** Math.floor(epoch / this.stepSize);
  }

  /** End an epoch: advance and set the optimizer's lr. Returns the new lr. */
  step(): number {
    this.epoch++;
    return this.optimizer.lr = this.lrAt(this.epoch);
  }

  /** Resume at `epoch` (e.g. from a checkpoint) and set the optimizer's lr. */
  setEpoch(epoch: number): number {
    this.epoch = epoch;
    return this.optimizer.lr = this.lrAt(epoch);
  }
}

// ---------------------------------------------------------------- CPU references (float64)

/** CPU reference of {@linkcode gradNorm}: `norm = √Σ g²`, `scale = min(1, maxNorm / (norm + 1e-6))`. */
export function gradNormCpu(
  grads: readonly ArrayLike<number>[],
  maxNorm: number,
): { norm: number; scale: number } {
  let s = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  const norm = Math.sqrt(s);
  return { norm, scale: Math.min(1, maxNorm / (norm + 1e-6)) };
}

/** One parameter's state for {@linkcode adamStepCpu}. */
export interface AdamCpuState {
  theta: Float64Array;
  m: Float64Array;
  v: Float64Array;
  step: number;
}

/** CPU reference of one Adam update of one parameter, in place, in float64 (`clip` is the clip factor). */
export function adamStepCpu(
  s: AdamCpuState,
  grad: ArrayLike<number>,
  o: { lr: number; betas: readonly [number, number]; eps: number; weightDecay: number; clip?: number },
): void {
  const [b1, b2] = o.betas;
  s.step++;
  const bc1 = 1 - b1 ** s.step, bc2 = 1 - b2 ** s.step;
  for (let i = 0; i < s.theta.length; i++) {
    const g = grad[i] * (o.clip ?? 1) + o.weightDecay * s.theta[i];
    s.m[i] = b1 * s.m[i] + (1 - b1) * g;
    s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
    s.theta[i] -= (o.lr * (s.m[i] / bc1)) / (Math.sqrt(s.v[i] / bc2) + o.eps);
  }
}
