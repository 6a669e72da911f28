/**
 * WGSL snippets every kernel family shares, and the `wgsl` template tag (`wgsl-preprocessor`) through which
 * one source declares all its variants with `#if ${cond}` / `#elif ${cond}` / `#else` / `#endif`.
 *
 * @example
 * ```ts
 * const body = wgsl`
 * ${linearEntry(128)} {
 *   ${LINEAR_ID}
 *   if (i >= p.n) { return; }
 * #if ${true}
 *   y[i] = x[i];
 * #endif
 * }`;
 * ```
 * @module
 */
import { wgsl as preprocess } from "wgsl-preprocessor";
import type { Engine } from "../engine/engine.ts";

/** Template tag: WGSL with `#if ${cond}` / `#elif ${cond}` / `#else` / `#endif` resolved at build time. */
export const wgsl: (strings: TemplateStringsArray, ...values: unknown[]) => string = preprocess;

/**
 * Whether kernels on `e` stage tiles of thousands of floats in workgroup memory (the GPU-shaped choice) or
 * read them from storage. Not on wgpu's OpenGL backend: it zero-initialises workgroup memory with one GLSL
 * array constructor listing every element, and Mesa's GLSL compiler takes a time that grows with the square
 * of that count — 2.8 s at 1 024 floats, 69 s at 4 096 for a single kernel on llvmpipe (Deno 2.9.6,
 * Mesa 22.3). Kernels whose workgroup arrays stay at a few hundred floats (reductions) are unaffected.
 */
export function stagesTiles(e: Engine): boolean {
  return e.adapterInfo.backend !== "gl";
}

/**
 * Entry point of a kernel that runs one invocation per element over a 2-D grid of workgroups (the x count
 * may be capped at 65 535); use with {@linkcode LINEAR_ID}. Its builtins are named `g` and `nwg`, so no
 * binding may take those names (they would be shadowed inside `main`).
 */
export const linearEntry = (wg: number) =>
  `@compute @workgroup_size(${wg}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u)`;

/** The element index `i` of this invocation under {@linkcode linearEntry}. */
export const LINEAR_ID = "let i = g.x + g.y * (nwg.x * WG_X);";

/**
 * Entry point of a kernel where each workgroup owns one unit of work (a row, a channel chunk) over a 2-D
 * grid of workgroups; `t` is the invocation's index in the workgroup. Use with {@linkcode WORKGROUP_ID}.
 * Its builtins are named `wid`, `nwg` and `t`, so no binding may take those names.
 */
export const workgroupEntry = (wg: number) =>
  `@compute @workgroup_size(${wg}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) t: u32)`;

/**
 * {@linkcode workgroupEntry} with the subgroup builtins too: `sgi` (the invocation's index in its subgroup)
 * and `sgs` (the subgroup size). The kernel must be declared with `subgroups: true`.
 */
export const workgroupEntrySubgroups = (wg: number) =>
  `@compute @workgroup_size(${wg}) fn main(@builtin(workgroup_id) wid: vec3u,
    @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) t: u32,
    @builtin(subgroup_invocation_id) sgi: u32, @builtin(subgroup_size) sgs: u32)`;

/** Whether kernels on `e` may use subgroup operations (the device has the `subgroups` feature). */
export function hasSubgroups(e: Engine): boolean {
  return e.device.features.has("subgroups");
}

/** Why a subgroup variant cannot run on a device without `subgroups` (the end of an error message). */
export const NO_SUBGROUPS = "it needs the device feature subgroups, which this adapter does not offer";

/** Whether kernels on `e` may use f16 (the device has the `shader-f16` feature). */
export function hasF16(e: Engine): boolean {
  return e.device.features.has("shader-f16");
}

/** Why an f16 variant cannot run on a device without `shader-f16` (the end of an error message). */
export const NO_F16 = "it needs the device feature shader-f16, which this adapter does not offer";

/**
 * Invocations per workgroup of the block kernels sized to one SIMD group (matmul's register and texture
 * blocks, conv2d's `blocked` kernels): on a software adapter that says its vector width
 * (`engine.adapterInfo.simdLanes`: llvmpipe 8 at 256 bits, 16 at 512), that many, within 8…16; 8
 * elsewhere. A narrower workgroup leaves lanes idle: at 512 bits, 8-invocation workgroups took 1024³ from
 * 43 ms to 65–67 ms of GPU time.
 */
export function blockWorkgroup(e: Engine): number {
  const lanes = e.adapterInfo.simdLanes;
  return lanes === undefined ? 8 : Math.min(16, Math.max(8, lanes));
}

/**
 * WGSL expression: f32 `x` (a variable) rounded to the nearest f16 value (ties to even), still as f32. WGSL
 * leaves the rounding of an f32 → f16 conversion to the implementation; rounding the f32 bits first makes the
 * conversion exact (and the result the CPU's `Math.f16round`) wherever `x` is an f16 normal (|x| ≥ 2⁻¹⁴, up
 * to 65 504); below, f16's subnormals round as the device does (an error below 2⁻²⁴). NaN and ±∞ pass
 * unchanged (rounding a NaN's bits could carry into its sign and make it -0).
 */
export const f16Round = (x: string) =>
  `select(bitcast<f32>((bitcast<u32>(${x}) + 0xfffu + ((bitcast<u32>(${x}) >> 13u) & 1u)) & 0xffffe000u), ` +
  `${x}, (bitcast<u32>(${x}) & 0x7f800000u) == 0x7f800000u)`;

/** The workgroup's linear index `w` under {@linkcode workgroupEntry}. */
export const WORKGROUP_ID = "let w = wid.x + wid.y * nwg.x;";

/** Compensated (Kahan) `acc += v` with the running compensation `comp` (both `var` f32). */
export const kahanAdd = (acc: string, comp: string, v: string) =>
  `{ let ky = (${v}) - ${comp}; let kt = ${acc} + ky; ${comp} = (kt - ${acc}) - ky; ${acc} = kt; }`;

/**
 * Tree reduction of the workgroup array `sh` (length `wg`, a power of two) with `combine(a, b)`; afterwards
 * `sh[0]` holds the result. Every invocation must reach it (it has barriers).
 */
export const treeReduce = (sh: string, wg: number, combine: (a: string, b: string) => string) =>
  `workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (t < s) { ${sh}[t] = ${combine(`${sh}[t]`, `${sh}[t + s]`)}; }
    workgroupBarrier();
  }`;

/**
 * The subgroup form of {@linkcode treeReduce} (under {@linkcode workgroupEntrySubgroups}, with
 * `var<workgroup> sh: array<T, wg>` declared): reduces the invocation's `var` `v` of type T across the
 * workgroup. `sgReduce(x)` is a WGSL expression that every invocation of a subgroup evaluates to the
 * reduction of the subgroup's `x` (e.g. `subgroupAdd(x)`), `identity` T's neutral value. Each level stores
 * one value per subgroup, at `t / sgs` (subgroups are taken to be runs of consecutive invocations, as on
 * every Vulkan and Metal GPU for a one-dimensional workgroup: the self-test would catch an adapter where they
 * are not), and the next level reduces those: ⌈log_sgs(wg)⌉ levels with two barriers each instead of
 * log₂(wg) (2 levels for subgroups of 32 at 256 invocations, against 8 barriers). `sgs` is uniform in a
 * compute shader, so the loop's barriers are in uniform control flow. Afterwards `sh[0]` holds the result.
 */
export const subgroupReduce = (sh: string, wg: number, sgReduce: (x: string) => string, identity: string) =>
  `var live = ${wg}u;
  loop {
    let r = ${sgReduce("v")};
    if (sgi == 0u) { ${sh}[t / sgs] = r; }
    workgroupBarrier();
    live = (live + sgs - 1u) / sgs;
    if (live <= 1u) { break; }
    v = ${identity};
    if (t < live) { v = ${sh}[t]; }
    workgroupBarrier();
  }`;

/** WGSL literal of the most negative finite f32 (the identity of `max`). */
export const NEG_MAX = "-3.402823e38";

/**
 * Statements of a partial-sum pass (under {@linkcode workgroupEntry} and {@linkcode WORKGROUP_ID}, with
 * `var<workgroup> sh: array<f32, wg>` declared): workgroup `w` sums `v` — defined by `term`, WGSL statements
 * that read the element index `i` — over `i ∈ [w·chunk, min((w+1)·chunk, n))`, compensated (Kahan) within
 * each invocation and a tree across them. Afterwards `sh[0]` holds the workgroup's partial sum.
 */
export const chunkSum = (wg: number, chunk: number, n: string, term: string) =>
  `let end = min((w + 1u) * ${chunk}u, ${n});
  var acc = 0.0;
  var comp = 0.0;
  for (var i = w * ${chunk}u + t; i < end; i += ${wg}u) {
    ${term}
    ${kahanAdd("acc", "comp", "v")}
  }
  sh[t] = acc;
  ${treeReduce("sh", wg, (a, b) => `${a} + ${b}`)}`;

/**
 * Statements of a final pass that one workgroup runs (with `var<workgroup> sh: array<f32, wg>` declared):
 * sums `value` (a WGSL expression of the index `k`) over `k ∈ [0, count)`, strided across the invocations,
 * compensated (Kahan) within each and a tree across them. Afterwards `sh[0]` holds the total.
 */
export const stridedSum = (wg: number, count: string, value: string) =>
  `var acc = 0.0;
  var comp = 0.0;
  for (var k = t; k < ${count}; k += ${wg}u) {
    ${kahanAdd("acc", "comp", value)}
  }
  sh[t] = acc;
  ${treeReduce("sh", wg, (a, b) => `${a} + ${b}`)}`;
