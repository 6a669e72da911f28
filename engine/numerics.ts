/**
 * NaN / Inf watch (debug switch `HE2GENE_DEBUG_NAN=1`, or `watchNumerics(engine, true)`).
 *
 * When on, every differentiable op's output is scanned on the GPU right after it is computed; the first
 * op (in recording order) whose output holds a NaN or ±Inf is remembered in a one-word buffer with an
 * atomic min, so no readback happens per op. The next readback (`toArray`) or `backward` checks the word
 * and throws an error naming that op and its shapes. When off, nothing is scanned and a NaN loss is simply
 * read back as NaN (never turned into a number).
 *
 * @module
 */
import { type Engine, GPUFailure, grid } from "./engine.ts";
import { defineKernel } from "./kernel.ts";
import type { Tensor } from "./tensor.ts";

const WG = 256;
const NONE = 0xffffffff;

// flag[0] = min(flag[0], id) if any x[i] is NaN or ±Inf (exponent bits all ones).
const scan = defineKernel({
  name: "finite_check",
  bindings: [{ name: "x", access: "read" }, { name: "flag", access: "read_write", type: "atomic<u32>" }],
  uniforms: { n: "u32", id: "u32" },
  workgroupSize: [WG],
  body: String.raw`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  if (i >= p.n) { return; }
  if ((bitcast<u32>(x[i]) & 0x7f800000u) == 0x7f800000u) { atomicMin(&flag[0], p.id); }
}`,
});

interface Watch {
  flag: Tensor;
  labels: Map<number, string>;
  next: number;
}

const watches = new WeakMap<Engine, Watch>();
let envDefault: boolean | null = null;

function envOn(): boolean {
  if (envDefault === null) {
    try {
      const v = Deno.env.get("HE2GENE_DEBUG_NAN");
      envDefault = v !== undefined && v !== "" && v !== "0";
    } catch {
      envDefault = false;
    }
  }
  return envDefault;
}

/** Turn the NaN / Inf watch on or off for an engine (default: `HE2GENE_DEBUG_NAN`). */
export function watchNumerics(engine: Engine, on: boolean): void {
  const w = watches.get(engine);
  if (!on) {
    w?.flag.dispose();
    watches.set(engine, { flag: null as unknown as Tensor, labels: new Map(), next: -1 });
    engine.afterRead = null;
    return;
  }
  if (w && w.next >= 0) return;
  const flag = engine.scope(() =>
    engine.tensor(new Float32Array(new Uint32Array([NONE, 0, 0, 0]).buffer), [4]).keep()
  );
  watches.set(engine, { flag, labels: new Map(), next: 1 });
  engine.afterRead = checkNumerics;
}

function active(engine: Engine): Watch | null {
  let w = watches.get(engine);
  if (!w && envOn()) {
    watchNumerics(engine, true);
    w = watches.get(engine);
  }
  return w && w.next >= 0 ? w : null;
}

/** @internal Scan `t` (the output of `op`) when the watch is on. */
export function noteOutput(t: Tensor, op: string, inputs: readonly (Tensor | null)[]): void {
  const e = t.engine;
  const w = active(e);
  if (!w || t.size === 0 || t.bytes > e.maxBinding) return;
  const id = w.next++;
  w.labels.set(id, `${op}(${inputs.map((x) => (x ? `[${x.shape}]` : "null")).join(", ")}) → [${t.shape}]`);
  e.run(scan, { bindings: [t, w.flag], uniforms: { n: t.size, id }, workgroups: grid(t.size, WG), info: op });
}

/**
 * Throw if a watched op produced a NaN or Inf since the watch started (one small readback).
 *
 * @example
 * ```ts
 * watchNumerics(engine, true);
 * const loss = mseLoss(pred, target);
 * await checkNumerics(engine); // throws "NaN/Inf first produced by log([4]) → [4]" if it happened
 * ```
 */
export async function checkNumerics(engine: Engine): Promise<void> {
  const w = active(engine);
  if (!w) return;
  const bits = new Uint32Array((await engine.readRaw(w.flag)).buffer);
  if (bits[0] !== NONE) {
    const label = w.labels.get(bits[0]) ?? `op #${bits[0]}`;
    throw new GPUFailure(`NaN or Inf first produced by ${label} (HE2GENE_DEBUG_NAN is on)`);
  }
}

/** @internal Whether the watch is on (the engine checks it on readback). */
export function numericsWatched(engine: Engine): boolean {
  return active(engine) !== null;
}
