/**
 * Winograd against the default convolution (`conv2dForward` & co.: the register-blocked path on llvmpipe,
 * the tiled one on GPUs) at two ResNet-50 stride-1 3×3 layer shapes, batch 8:
 * - layer3-like: x [8, 256, 14, 14] * w [256, 256, 3, 3], padding 1
 * - layer1-like: x [8, 64, 56, 56] * w [64, 64, 3, 3], padding 1
 *
 * Each pass (forward, and with `--passes` also dx and dw) runs once per strategy to compile (not timed), then
 * the strategies take turns `--reps` times; wall time covers recording, submission and completion
 * (`engine.sync()`, no readback). The median and the minimum are reported (the minimum is the least
 * disturbed when other processes share the CPU).
 * GFLOP/s counts the direct convolution's 2·N·Cout·OH·OW·Cin·9 FLOPs for every strategy, so it compares
 * times. `--profile` also prints GPU time per kernel (needs `timestamp-query`).
 *
 * Run alone: `deno run --allow-read --allow-env bench/winograd.ts [--reps N] [--passes fwd,dx,dw]
 * [--tiles 2,4] [--layers layer3-like,layer1-like] [--profile]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine, type Engine } from "../mod.ts";
import {
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dForward,
  conv2dGeometry,
} from "../kernels/conv2d/mod.ts";
import {
  winogradBackwardInput,
  winogradBackwardWeight,
  winogradForward,
  type WinogradTile,
} from "../kernels/conv2d/winograd.ts";
import type { Tensor } from "../engine/tensor.ts";

const LAYERS = [
  { name: "layer3-like", x: [8, 256, 14, 14], w: [256, 256, 3, 3] },
  { name: "layer1-like", x: [8, 64, 56, 56], w: [64, 64, 3, 3] },
];
type Pass = "fwd" | "dx" | "dw";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

// Multiples of 1/16 in [−0.5, 0.5] (as bench/conv.ts).
function fill(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (((Math.imul(i + seed, 0x9e3779b1) >>> 0) % 17) - 8) / 16;
  return out;
}

/** Wall ms of `op` until the GPU is done (no readback). */
async function once(e: Engine, op: () => Tensor): Promise<number> {
  const t0 = performance.now();
  const y = op();
  await e.sync();
  const ms = performance.now() - t0;
  y.dispose();
  return ms;
}

async function profile(e: Engine, op: () => Tensor) {
  if (!e.device.features.has("timestamp-query")) return [];
  e.startProfile();
  op().dispose();
  return await e.profileReport();
}

/** One row of the table. */
export interface WinogradRow {
  layer: string;
  pass: Pass;
  strategy: string;
  /** First call (compiles its kernels), ms. */
  firstMs: number;
  /** Median warm wall time, ms. */
  ms: number;
  /** Fastest warm wall time, ms (the least disturbed by other processes). */
  minMs: number;
  /** Direct-convolution GFLOP ÷ median warm time. */
  gflops: number;
}

/**
 * Time the default convolution and Winograd (each tile size) at the two layer shapes; prints a table
 * through `log` and returns its rows.
 *
 * @example
 * ```ts
 * const rows = await benchWinograd(engine, { reps: 3, passes: ["fwd"], tiles: [2, 4], log: console.log });
 * ```
 */
export async function benchWinograd(
  e: Engine,
  opts: {
    reps: number;
    passes: Pass[];
    tiles: WinogradTile[];
    layers?: string[];
    profile?: boolean;
    log: (s: string) => void;
  },
): Promise<WinogradRow[]> {
  const rows: WinogradRow[] = [];
  for (const l of LAYERS.filter((l) => !opts.layers || opts.layers.includes(l.name))) {
    const g = conv2dGeometry(l.x, l.w, { padding: 1 });
    const yShape = [g.n, g.cout, g.oh, g.ow];
    const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
    const x = e.tensor(fill(size(l.x), 1), l.x);
    const w = e.tensor(fill(size(l.w), 2), l.w);
    const dy = e.tensor(fill(size(yShape), 3), yShape);
    const gflop = 2 * g.n * g.cout * g.oh * g.ow * g.cin * 9 / 1e9;
    const o = { padding: 1 };
    for (const pass of opts.passes) {
      const strategies: [string, () => Tensor][] = [
        [
          "default",
          pass === "fwd"
            ? () => conv2dForward(x, w, o)
            : pass === "dx"
            ? () => conv2dBackwardInput(dy, w, l.x, o)
            : () => conv2dBackwardWeight(x, dy, l.w, o),
        ],
        ...opts.tiles.map((tile): [string, () => Tensor] => [
          `winograd F(${tile}×${tile},3×3)`,
          pass === "fwd"
            ? () => winogradForward(x, w, g, o, { tile })
            : pass === "dx"
            ? () => winogradBackwardInput(dy, w, g, { tile })
            : () => winogradBackwardWeight(x, dy, g, { tile }),
        ]),
      ];
      // First calls compile; then the strategies take turns, so that a busy spell hits them alike.
      const first = [];
      for (const [, op] of strategies) first.push(await once(e, op));
      const times: number[][] = strategies.map(() => []);
      for (let r = 0; r < opts.reps; r++) {
        for (const [i, [, op]] of strategies.entries()) times[i].push(await once(e, op));
      }
      for (const [i, [strategy, op]] of strategies.entries()) {
        const ms = median(times[i]), minMs = Math.min(...times[i]);
        const row = { layer: l.name, pass, strategy, firstMs: first[i], ms, minMs, gflops: gflop / ms * 1e3 };
        rows.push(row);
        opts.log(
          `${l.name.padEnd(12)} ${pass.padEnd(4)} ${strategy.padEnd(24)} ${ms.toFixed(1).padStart(7)} ms ` +
            `${row.gflops.toFixed(1).padStart(5)} GFLOP/s   min ${minMs.toFixed(1).padStart(7)} ms ` +
            `${(gflop / minMs * 1e3).toFixed(1).padStart(5)} GFLOP/s   (first call ${
              first[i].toFixed(0)
            } ms)`,
        );
        for (const k of opts.profile ? await profile(e, op) : []) {
          opts.log(`    ${k.kernel.padEnd(48)} ${k.ms.toFixed(2).padStart(8)} ms × ${k.dispatches}`);
        }
      }
    }
    x.dispose();
    w.dispose();
    dy.dispose();
  }
  return rows;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      reps: { type: "string", default: "3" },
      passes: { type: "string", default: "fwd" },
      tiles: { type: "string", default: "2,4" },
      profile: { type: "boolean", default: false },
      layers: { type: "string", default: "layer3-like,layer1-like" },
    },
  });
  const e = await createEngine();
  console.log(`adapter: ${e.adapterInfo.name}${e.adapterInfo.software ? " (software)" : ""}`);
  console.log(`GFLOP/s = direct-convolution FLOPs (2·N·Cout·OH·OW·Cin·9) ÷ warm wall time`);
  await benchWinograd(e, {
    reps: Number(values.reps),
    passes: values.passes.split(",") as Pass[],
    tiles: values.tiles.split(",").map(Number) as WinogradTile[],
    layers: values.layers.split(","),
    profile: values.profile,
    log: console.log,
  });
  e.destroy();
}
