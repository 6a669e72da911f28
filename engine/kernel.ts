/**
 * Kernel declarations: one object per shader that lists its storage bindings and uniforms once. From that
 * single declaration we derive the WGSL binding/struct header, the bind group layout and the host-side
 * packing of the uniforms, so there is no second list to keep in step.
 *
 * @example
 * ```ts
 * const scale = defineKernel({
 *   name: "scale",
 *   bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
 *   uniforms: { n: "u32", alpha: "f32" },
 *   workgroupSize: [64],
 *   body: String.raw`
 * @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
 *   if (g.x < p.n) { y[g.x] = p.alpha * x[g.x]; }
 * }`,
 * });
 * ```
 * @module
 */

/** Element type of a storage binding. */
export type StorageType = "f32" | "vec4<f32>" | "u32" | "i32" | "f16" | "vec4<f16>" | "atomic<u32>";

/** One binding of a kernel, in binding order: a storage buffer, or an rgba32float texture. */
export interface BindingDecl {
  name: string;
  access: "read" | "read_write";
  /** Element type of the runtime-sized array (default `f32`). */
  type?: StorageType;
  /**
   * An rgba32float texture instead of a storage buffer: `sampled` is `texture_2d<f32>` (read with
   * `textureLoad`), `write` is `texture_storage_2d<rgba32float, write>`; bound with an engine texture
   * (`Engine.texture`). `access` and `type` are ignored.
   */
  texture?: "sampled" | "write";
}

/**
 * Uniform field types. Scalars are 4 bytes; `u32x8` is eight u32 values (shapes and strides up to rank 8)
 * read in WGSL through the generated accessor `p_<name>(i)`.
 */
export type UniformType = "u32" | "i32" | "f32" | "u32x8";

/** Values for a kernel's uniforms, keyed as declared. */
export type UniformValues<U extends Record<string, UniformType>> = {
  [K in keyof U]: U[K] extends "u32x8" ? ArrayLike<number>
    : "u32x8" extends U[K] ? number | ArrayLike<number> // erased (generic) kernels
    : number;
};

/** The single declaration of a compute shader. */
export interface KernelDecl<U extends Record<string, UniformType>> {
  /** Name shown in traces, labels and error messages. */
  name: string;
  bindings: readonly BindingDecl[];
  uniforms: U;
  /** Workgroup size; the body must use the constant `WG_X` (and `WG_Y`, `WG_Z`) or repeat the values. */
  workgroupSize: readonly number[];
  /** WGSL after the generated header; entry point `main`. */
  body: string;
  /** `enable f16;` is emitted when true. */
  f16?: boolean;
  /** `enable subgroups;` is emitted when true (the device must have the `subgroups` feature). */
  subgroups?: boolean;
}

/** A declared kernel: its full WGSL, its layout entries and its uniform packer. */
export interface Kernel<U extends Record<string, UniformType> = Record<string, UniformType>> {
  readonly name: string;
  readonly source: string;
  readonly bindings: readonly BindingDecl[];
  readonly uniformBytes: number;
  /** Pack uniform values into `out` (a Uint32Array of `uniformBytes / 4` words). */
  pack(values: UniformValues<U>, out: Uint32Array): void;
  /** Number of header lines before `body`, to map compiler line numbers back to the body. */
  readonly headerLines: number;
}

/**
 * Turn a declaration into a {@linkcode Kernel}.
 *
 * @example
 * ```ts
 * const k = defineKernel({ name: "noop", bindings: [], uniforms: { n: "u32" }, workgroupSize: [1],
 *   body: "@compute @workgroup_size(1) fn main() { _ = p.n; }" });
 * console.log(k.source.includes("struct Params"));
 * ```
 */
export function defineKernel<U extends Record<string, UniformType>>(decl: KernelDecl<U>): Kernel<U> {
  const fields = Object.entries(decl.uniforms) as [string, UniformType][];
  // Arrays first (16-byte aligned), then scalars; pad the struct to 16 bytes.
  const arrays = fields.filter(([, t]) => t === "u32x8");
  const scalars = fields.filter(([, t]) => t !== "u32x8");
  const layout: { name: string; type: UniformType; word: number }[] = [];
  let word = 0;
  const structLines: string[] = [];
  for (const [name, type] of arrays) {
    layout.push({ name, type, word });
    structLines.push(`  ${name}: array<vec4<u32>, 2>,`);
    word += 8;
  }
  for (const [name, type] of scalars) {
    layout.push({ name, type, word });
    structLines.push(`  ${name}: ${type},`);
    word += 1;
  }
  if (word === 0) {
    structLines.push("  _unused: u32,");
    word = 1;
  }
  const words = Math.ceil(word / 4) * 4;
  const [wx, wy = 1, wz = 1] = decl.workgroupSize;

  const header: string[] = [];
  if (decl.f16) header.push("enable f16;");
  if (decl.subgroups) header.push("enable subgroups;");
  header.push(`// kernel: ${decl.name}`);
  header.push(`const WG_X: u32 = ${wx}u;`, `const WG_Y: u32 = ${wy}u;`, `const WG_Z: u32 = ${wz}u;`);
  header.push("struct Params {", ...structLines, "};");
  decl.bindings.forEach((b, i) => {
    const at = `@group(0) @binding(${i})`;
    if (b.texture === "sampled") header.push(`${at} var ${b.name}: texture_2d<f32>;`);
    else if (b.texture === "write") {
      header.push(`${at} var ${b.name}: texture_storage_2d<rgba32float, write>;`);
    } else header.push(`${at} var<storage, ${b.access}> ${b.name}: array<${b.type ?? "f32"}>;`);
  });
  header.push(`@group(0) @binding(${decl.bindings.length}) var<uniform> p: Params;`);
  for (const [name] of arrays) {
    header.push(`fn p_${name}(i: u32) -> u32 { return p.${name}[i / 4u][i % 4u]; }`);
  }
  const source = header.join("\n") + "\n" + decl.body;

  const f32 = new Float32Array(1);
  const f32u = new Uint32Array(f32.buffer);
  const i32 = new Int32Array(1);
  const i32u = new Uint32Array(i32.buffer);
  const pack = (values: UniformValues<U>, out: Uint32Array) => {
    for (const { name, type, word } of layout) {
      const v = (values as Record<string, number | ArrayLike<number>>)[name];
      if (v === undefined) {
        throw new TypeError(`Cannot run kernel ${decl.name}: uniform "${name}" is missing`);
      }
      if (type === "u32x8") {
        const a = v as ArrayLike<number>;
        if (a.length > 8) throw new RangeError(`Cannot run kernel ${decl.name}: rank ${a.length} > 8`);
        for (let i = 0; i < 8; i++) out[word + i] = i < a.length ? a[i] >>> 0 : 0;
      } else if (type === "f32") {
        f32[0] = v as number;
        out[word] = f32u[0];
      } else if (type === "i32") {
        i32[0] = v as number;
        out[word] = i32u[0];
      } else {
        out[word] = (v as number) >>> 0;
      }
    }
  };
  return {
    name: decl.name,
    source,
    bindings: decl.bindings,
    uniformBytes: words * 4,
    pack,
    headerLines: header.length,
  };
}

/** Values a variant parameter may take: they become part of the kernel's name and cache key. */
export type VariantValue = string | number | boolean;
/** Parameters of one kernel variant (tile sizes, vector width, flags…). */
export type VariantParams = Record<string, VariantValue>;

/**
 * A kernel family: one declaration, parameterised, built once per distinct parameter set. The cache key and
 * the kernel's name are derived from the parameters (`family` + `_key-value` for each parameter, in
 * declaration order of the object passed), so a variant is spelled once, in its parameters.
 */
export interface KernelFamily<P extends VariantParams, U extends Record<string, UniformType>> {
  /** The kernel for these parameters (built on first use). */
  (params: P): Kernel<U>;
  /** The family name given to {@linkcode variants}. */
  readonly family: string;
  /** Name of the variant for `params`, e.g. `conv2d_fwd_tm8_tn8_vec4`. */
  nameOf(params: P): string;
  /** Variants built so far (for traces and the self-test). */
  readonly built: ReadonlyMap<string, Kernel<U>>;
}

/** Name part of one parameter: `tm8`, `vec4` for `{ vec: 4 }`, `relu` for `{ relu: true }`, none for false. */
function paramPart(k: string, v: VariantValue): string {
  if (v === false || v === "" || v === "none") return "";
  if (v === true) return k;
  return `${k}${String(v).replace(/[^A-Za-z0-9]+/g, "")}`;
}

/**
 * Declare a family of kernel variants. `make` receives the parameters and returns the declaration without
 * its name; WGSL sources use `wgsl` from `wgsl-preprocessor` (`#if ${p.vec === 4}` … `#endif`) so that every
 * variant lives in one source. Each parameter set is built once.
 *
 * @example
 * ```ts
 * const scale = variants("scale", (p: { vec: 1 | 4 }) => ({
 *   bindings: [{ name: "x", access: "read", type: p.vec === 4 ? "vec4<f32>" : "f32" }],
 *   uniforms: { n: "u32" },
 *   workgroupSize: [64],
 *   body: "@compute @workgroup_size(64) fn main() { _ = p.n; _ = x[0]; }",
 * }));
 * console.log(scale({ vec: 4 }).name); // "scale_vec4"
 * ```
 */
export function variants<P extends VariantParams, U extends Record<string, UniformType>>(
  family: string,
  make: (params: P) => Omit<KernelDecl<U>, "name">,
): KernelFamily<P, U> {
  const built = new Map<string, Kernel<U>>();
  const nameOf = (params: P) =>
    [family, ...Object.entries(params).map(([k, v]) => paramPart(k, v))].filter((s) => s !== "").join("_");
  const get = (params: P): Kernel<U> => {
    const key = JSON.stringify(params);
    let k = built.get(key);
    if (!k) {
      k = defineKernel({ ...make(params), name: nameOf(params) });
      built.set(key, k);
    }
    return k;
  };
  return Object.assign(get, { family, nameOf, built });
}

/**
 * A kernel without parameters, built on first use (so that importing a module compiles nothing).
 *
 * @example
 * ```ts
 * const noop = single("noop", () => ({ bindings: [], uniforms: {}, workgroupSize: [1],
 *   body: "@compute @workgroup_size(1) fn main() {}" }));
 * console.log(noop().name); // "noop"
 * ```
 */
export function single<U extends Record<string, UniformType>>(
  name: string,
  make: () => Omit<KernelDecl<U>, "name">,
): () => Kernel<U> {
  const family = variants<Record<string, never>, U>(name, make);
  return () => family({});
}
