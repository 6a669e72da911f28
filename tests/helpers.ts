/**
 * Shared test helpers: one engine per test process, the tolerances stated once, seeded random inputs,
 * and a skip helper for tests that need `../shared/data`.
 */
import { AssertionError, deepStrictEqual } from "node:assert";
import { createEngine, type Engine, mul, sum, Tape, type Tensor } from "../mod.ts";
import { requiresGrad } from "../engine/autograd.ts";
import { HE2Gene, TINY } from "../model/mod.ts";
import { compareClose, TOL, type Tolerance } from "../kernels/tolerance.ts";
import { saveModel } from "../cli/checkpoint.ts";

/**
 * Tolerances per op family, stated once in kernels/tolerance.ts (shared with `he2gene selftest`).
 * `|got − want| ≤ atol + rtol·|want|` elementwise; matmul and conv2d against the scale `Σ_k |a_ik||b_kj|`
 * in place of |want| (the `scale` argument of {@linkcode assertClose}).
 */
export { lossGradTolerance, TOL, type Tolerance } from "../kernels/tolerance.ts";

let shared: Promise<Engine> | null = null;

/** The engine shared by all tests of this process. */
export function engine(): Promise<Engine> {
  return shared ??= createEngine().then((e) => {
    if (Deno.env.get("HE2GENE_TEST_DESTROY")) globalThis.addEventListener("unload", () => e.destroy());
    return e;
  });
}

/** A GPU test: sanitizers off (the device keeps a pending `lost` promise for its whole life). */
export function gpuTest(name: string, fn: (e: Engine) => Promise<void> | void): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const e = await engine();
      await fn(e);
      e.checkError();
    },
  });
}

/**
 * A separate engine on which one storage binding holds only `maxBinding` bytes, with binding offsets
 * aligned to `offsetAlign` bytes. WebGPU cannot request limits below its defaults (128 MiB, 256 B), so the
 * engine's own limits are lowered: the kernels split larger tensors into binding ranges as they do beyond
 * 128 MiB, and a tensor that a kernel binds whole anyway fails `engine.run`. Cheap tests of those paths.
 */
export async function smallBindingEngine(maxBinding = 4 << 20, offsetAlign = 256): Promise<Engine> {
  const e = await createEngine();
  Object.defineProperty(e, "maxBinding", { value: Math.min(maxBinding, e.maxBinding) });
  Object.defineProperty(e, "offsetAlign", { value: Math.max(offsetAlign, e.offsetAlign) });
  return e;
}

/** Deterministic pseudo-random numbers (mulberry32) in [lo, hi). */
export function rand(n: number, seed = 1, lo = -1, hi = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = lo + (hi - lo) * u;
  }
  return out;
}

/**
 * Assert `got ≈ want` elementwise within `tol` ({@linkcode compareClose}: against `scale[i]` when given, the
 * Σ|a||b| of matmul and conv2d, else |want[i]|); the message names the first bad index and the worst error.
 */
export function assertClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: Tolerance,
  what = "values",
  scale?: ArrayLike<number>,
): void {
  if (got.length !== want.length) {
    throw new AssertionError({ message: `${what}: length ${got.length}, expected ${want.length}` });
  }
  const c = compareClose(got, want, tol, scale);
  if (!c.ok) {
    const bad = c.firstBad;
    throw new AssertionError({
      message:
        `${what}: ${got.length} values, first mismatch at ${bad}: got ${got[bad]}, expected ${want[bad]}; ` +
        `worst |err| ${c.worstBad} at ${c.worstAt} (rtol ${tol.rtol}, atol ${tol.atol})`,
    });
  }
}

/** Path of the shared data folder, or null (with a message) when absent. */
export function sharedData(rel: string): string | null {
  const p = new URL(`../../shared/data/${rel}`, import.meta.url).pathname;
  try {
    Deno.statSync(p);
    return p;
  } catch {
    console.warn(`skipped: ../shared/data/${rel} is absent`);
    return null;
  }
}

/** Deep equality (node:assert's deepStrictEqual). */
export function assertEquals<T>(actual: unknown, expected: T, message?: string): void {
  deepStrictEqual(actual, expected, message);
}

// deno-lint-ignore no-explicit-any
type ErrorClass = new (...args: any[]) => Error;

/** Assert that `fn` throws an instance of `cls` whose message includes `includes`. */
export function assertThrows(fn: () => unknown, cls: ErrorClass, includes = ""): Error {
  try {
    fn();
  } catch (e) {
    checkError(e, cls, includes);
    return e as Error;
  }
  throw new AssertionError({ message: `expected ${cls.name} (${includes}), but nothing was thrown` });
}

/** Assert that `fn` rejects with an instance of `cls` whose message includes `includes`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls: ErrorClass,
  includes = "",
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    checkError(e, cls, includes);
    return e as Error;
  }
  throw new AssertionError({ message: `expected ${cls.name} (${includes}), but nothing was thrown` });
}

function checkError(e: unknown, cls: ErrorClass, includes: string): void {
  if (!(e instanceof cls)) {
    throw new AssertionError({
      message: `expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`,
    });
  }
  if (!e.message.includes(includes)) {
    throw new AssertionError({ message: `expected message to include "${includes}", got "${e.message}"` });
  }
}

/**
 * Check the tape's gradients of `f` against central finite differences evaluated on the GPU. The output
 * is reduced to a scalar with fixed random weights, `Σ r ⊙ f(x)`, so the backward pass sees a non-uniform
 * output gradient (a plain sum would hide a backward that ignores dy's values). Inputs are small: each
 * element costs two forward passes and readbacks.
 * Tolerance: |analytic − numeric| ≤ atol + rtol·|numeric| with float32 forward passes and step `eps`.
 */
export async function assertGradients(
  e: Engine,
  f: (xs: Tensor[]) => Tensor,
  inputs: { data: Float32Array; shape: number[] }[],
  opts: { eps?: number; rtol?: number; atol?: number; what?: string } = {},
): Promise<void> {
  const eps = opts.eps ?? 1e-2;
  const tol = {
    rtol: opts.rtol ?? TOL.finiteDifferences.rtol,
    atol: opts.atol ?? TOL.finiteDifferences.atol,
  };
  let weights: Tensor | null = null;
  const weighted = (y: Tensor) => {
    weights ??= e.scope(() => e.tensor(rand(y.size, 4242, 0.5, 1.5), y.shape).keep());
    return sum(mul(y, weights));
  };
  const ts = inputs.map((x) => requiresGrad(e.tensor(x.data, x.shape)));
  const tape = new Tape();
  const loss = tape.record(() => weighted(f(ts)));
  const grads = tape.backward(loss);
  const analytic = await Promise.all(ts.map((t) => grads.get(t)?.toArray() ?? new Float32Array(t.size)));
  tape.dispose();
  const value = async (xs: Float32Array[]) =>
    (await e.scope(() => weighted(f(xs.map((x, i) => e.tensor(x, inputs[i].shape))))).toArray())[0];
  for (let i = 0; i < inputs.length; i++) {
    const numeric = new Float32Array(inputs[i].data.length);
    for (let j = 0; j < numeric.length; j++) {
      const plus = inputs.map((x) => x.data.slice());
      const minus = inputs.map((x) => x.data.slice());
      plus[i][j] += eps;
      minus[i][j] -= eps;
      numeric[j] = ((await value(plus)) - (await value(minus))) / (2 * eps);
    }
    assertClose(analytic[i], numeric, tol, `${opts.what ?? "gradient"} of input ${i}`);
  }
  (weights as Tensor | null)?.dispose();
  for (const g of grads.values()) g.dispose();
  for (const t of ts) t.dispose();
}

/** The gene names {@linkcode tinyCheckpoint} stores by default. */
export const TINY_GENES = { target: ["FASN", "ERBB2", "GNAS"], aux: ["a", "b", "c", "d", "e"] };

/**
 * A tiny HE2Gene-Base checkpoint (TINY backbone, 3 target genes, 5 aux, seed 1) saved as safetensors at
 * `path`, with the gene names `genes` (default {@linkcode TINY_GENES}; `null`: none) in its metadata.
 */
export async function tinyCheckpoint(
  path: string,
  genes: { target: string[]; aux: string[] } | null = TINY_GENES,
): Promise<string> {
  const model = HE2Gene.init(
    await engine(),
    { backbone: TINY, variant: "base", targetGenes: 3, auxGenes: 5 },
    1,
  );
  await saveModel(model, path, genes ? { targetGenes: genes.target, auxGenes: genes.aux } : {});
  model.dispose();
  return path;
}

/**
 * ((i·a + b) mod 2³² >> 8) / 2²⁴ − 0.5 for i < n: inputs that numpy and TypeScript compute exactly (each a
 * multiple of 2⁻²⁴), as the fixture scripts in tests/fixtures/big_tensors/ do.
 */
export function hashed(n: number, a: number, b: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (((Math.imul(i, a | 0) + b) >>> 0) >>> 8) / 16777216 - 0.5;
  return out;
}

/** The values of `t` at `indices` (buffer copies of single elements, one readback). */
export async function valuesAt(t: Tensor, indices: readonly number[]): Promise<Float32Array> {
  const e = t.engine;
  const out = e.empty([indices.length], "values at");
  indices.forEach((i, k) => e.copy(t, out, { srcOffset: i, dstOffset: k, size: 1 }));
  const v = await out.toArray();
  out.dispose();
  return v;
}

/**
 * The names of the kernels `fn` dispatches (from the engine's trace), e.g. `conv2d_direct_fwd`; the trace
 * is printed through console.error, captured here.
 */
export function dispatched(e: Engine, fn: () => void): string[] {
  const lines: string[] = [];
  const [trace, print] = [e.trace, console.error];
  e.trace = true;
  console.error = (...args: unknown[]) => void lines.push(args.join(" "));
  try {
    e.scope(fn);
  } finally {
    e.trace = trace;
    console.error = print;
  }
  return lines.map((l) => /dispatch (\S+)/.exec(l)?.[1] ?? l);
}
