/**
 * The adapter's measured arithmetic peak: a kernel of independent vec4 FMA chains held in registers (no memory
 * traffic but one store per invocation), timed in wall clock like every other figure (dispatch to
 * completion), the fastest of a few runs. The bench prints each GFLOP/s figure also as a percentage of this
 * peak.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { variants } from "../engine/kernel.ts";
import { wgsl } from "../kernels/_wgsl.ts";

const WG = 64;
/** Independent vec4 accumulators per invocation (32 FMA chains: enough to hide FMA latency). */
const CHAINS = 8;
/**
 * FMAs per chain per loop iteration. On llvmpipe (2 cores) a loop of one FMA per chain (2 chains) measured
 * the loop's own cost, 45.6 GFLOP/s; 8 chains unrolled 4 times reach ~130 (67 per llvmpipe thread), half of
 * what a C loop of AVX2 FMAs gets on the same cores (264; 135 per thread).
 */
const UNROLL = 4;

const fmaKernel = variants("peak_fma", (p: { iters: number }) => {
  const seq = Array.from({ length: CHAINS }, (_, c) => c);
  const step = seq.map((c) => `v${c} = fma(v${c}, a, b);`).join(" ");
  return {
    bindings: [{ name: "y", access: "read_write" }],
    uniforms: { a: "f32", b: "f32" },
    workgroupSize: [WG],
    body: wgsl`
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  let a = vec4f(p.a);
  let b = vec4f(p.b);
  ${seq.map((c) => `var v${c} = vec4f(f32(i) * 1e-9, 0.1, 0.2, ${c}.0 * 0.01);`).join("\n  ")}
  for (var k = 0u; k < ${p.iters / UNROLL}u; k++) {
    ${Array(UNROLL).fill(step).join("\n    ")}
  }
  y[i] = dot(${seq.map((c) => `v${c}`).join(" + ")}, vec4f(1.0));
}`,
  };
});

/**
 * Measured FMA throughput in GFLOP/s (an FMA counts as 2 FLOPs): the fastest of `reps` timed dispatches of
 * `invocations` invocations after one warm-up (a peak: the fastest is the one least disturbed by other
 * processes sharing the CPU on a software adapter).
 */
export async function measurePeak(
  e: Engine,
  o: { invocations?: number; iters?: number; reps?: number } = {},
) {
  const invocations = o.invocations ?? (e.adapterInfo.software ? 1 << 16 : 1 << 22);
  // FMAs per chain, a multiple of UNROLL.
  const iters = Math.ceil((o.iters ?? (e.adapterInfo.software ? 4096 : 8192)) / UNROLL) * UNROLL;
  const reps = o.reps ?? 5;
  const y = e.empty([invocations], "peak");
  const k = fmaKernel({ iters });
  const x = Math.min(invocations / WG, 65535);
  const run = () =>
    e.run(k, {
      bindings: [y],
      uniforms: { a: 0.999, b: 1e-3 },
      workgroups: [x, Math.ceil(invocations / WG / x), 1],
    });
  run();
  await e.sync();
  const ms: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    run();
    await e.sync();
    ms.push(performance.now() - t0);
  }
  y.dispose();
  const t = Math.min(...ms);
  const flops = invocations * iters * CHAINS * 4 * 2;
  return { gflops: flops / (t * 1e6), ms: t };
}

/** `gflops` as a percentage of the measured peak. */
export const pctOfPeak = (gflops: number, peakGflops: number): number => (100 * gflops) / peakGflops;

/** A percentage for the tables: one decimal, "–" when unknown. */
export const fmtPct = (pct: number | undefined): string =>
  pct === undefined || !Number.isFinite(pct) ? "–" : `${pct.toFixed(1)}%`;
