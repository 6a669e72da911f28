import {
  Adam,
  type AdamCpuState,
  adamStepCpu,
  bindingRanges,
  gradNorm,
  gradNormCpu,
  type OptimReads,
  StepLR,
  type TextureLayout,
} from "../../kernels/optim.ts";
import type { Engine } from "../../engine/engine.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { assertClose, assertEquals, assertThrows, gpuTest, rand, TOL } from "../helpers.ts";

/** Tolerances, stated once in kernels/tolerance.ts (float32 GPU state against torch's Adam in float64). */
const { theta: THETA, moments: MOMENTS, norm: NORM } = TOL.adam;

const SHAPES: Record<string, number[]> = { a: [1], b: [7], "c.weight": [33, 5], d: [1000] };
const size = (s: readonly number[]) => s.reduce((x, y) => x * y, 1);

interface Trial {
  steps: number;
  lr: number;
  weightDecay: number;
  clipNorm?: number;
  maxChunkElements?: number;
  /** Leave parameter "b" without a gradient at this step. */
  skipB?: number;
  reads?: OptimReads;
  textureLayout?: TextureLayout;
  /** The parameters (default {@linkcode SHAPES}). */
  shapes?: Record<string, number[]>;
}

/** Run `trial` on the GPU and on the CPU reference; return both final states and the norms per step. */
async function trial(e: Engine, t: Trial) {
  const params = new Map<string, Tensor>();
  const cpu = new Map<string, AdamCpuState>();
  for (const [name, shape] of Object.entries(t.shapes ?? SHAPES)) {
    const x = rand(size(shape), name.length * 7 + shape[0]);
    params.set(name, e.tensor(x, shape));
    const n = x.length;
    cpu.set(name, { theta: Float64Array.from(x), m: new Float64Array(n), v: new Float64Array(n), step: 0 });
  }
  const opts = { lr: t.lr, betas: [0.9, 0.999] as const, eps: 1e-8, weightDecay: t.weightDecay };
  const { maxChunkElements, reads, textureLayout } = t;
  const opt = new Adam(params, { ...opts, maxChunkElements, reads, textureLayout });
  const norms: number[] = [], wantNorms: number[] = [];
  for (let s = 0; s < t.steps; s++) {
    const grads = new Map<string, Tensor>();
    const cpuGrads = new Map<string, Float32Array>();
    for (const [name, shape] of Object.entries(t.shapes ?? SHAPES)) {
      if (name === "b" && s === t.skipB) continue;
      const g = rand(size(shape), 1000 * s + name.length, -1, 1);
      grads.set(name, e.tensor(g, shape));
      cpuGrads.set(name, g);
    }
    const norm = opt.step(grads, { clipNorm: t.clipNorm });
    const want = t.clipNorm === undefined ? undefined : gradNormCpu([...cpuGrads.values()], t.clipNorm);
    for (const [name, g] of cpuGrads) adamStepCpu(cpu.get(name)!, g, { ...opts, clip: want?.scale });
    if (norm) {
      norms.push((await norm.toArray())[0]);
      wantNorms.push(want!.norm);
      norm.dispose();
    }
    for (const g of grads.values()) g.dispose();
  }
  const state = await opt.stateDict();
  const theta = new Map<string, Float32Array>();
  for (const [name, p] of params) theta.set(name, await p.toArray());
  opt.dispose();
  for (const p of params.values()) p.dispose();
  return { theta, state, cpu, norms, wantNorms, opt };
}

function compare(r: Awaited<ReturnType<typeof trial>>, what: string): void {
  for (const [name, c] of r.cpu) {
    assertClose(r.theta.get(name)!, c.theta, THETA, `${what}: ${name}`);
    assertClose(r.state.get(`${name}.exp_avg`)!.data, c.m, MOMENTS, `${what}: ${name}.exp_avg`);
    assertClose(r.state.get(`${name}.exp_avg_sq`)!.data, c.v, MOMENTS, `${what}: ${name}.exp_avg_sq`);
    assertEquals(r.state.get(`${name}.step`)!.data[0], c.step, `${what}: ${name}.step`);
  }
  assertClose(r.norms, r.wantNorms, NORM, `${what}: gradient norms`);
}

gpuTest("Adam matches torch's update over several steps, without weight decay or clipping", async (e) => {
  compare(await trial(e, { steps: 5, lr: 1e-2, weightDecay: 0 }), "plain");
});

gpuTest("Adam matches torch's update with L2 weight decay and active gradient clipping", async (e) => {
  // Random gradients on 1205 elements have a global norm ≈ 20, so clipping to 1 scales them by ≈ 0.05.
  const r = await trial(e, { steps: 5, lr: 1e-2, weightDecay: 0.05, clipNorm: 1.0 });
  compare(r, "decay + clip");
  assertEquals(r.norms.every((n) => n > 1), true);
});

gpuTest("Adam with clipping requested but inactive (norm below max) equals torch's update", async (e) => {
  const r = await trial(e, { steps: 3, lr: 1e-3, weightDecay: 1e-4, clipNorm: 100 });
  compare(r, "inactive clip");
});

gpuTest("a parameter without a gradient is skipped and its step count does not advance", async (e) => {
  const r = await trial(e, { steps: 4, lr: 1e-2, weightDecay: 0.01, clipNorm: 1.0, skipB: 1 });
  compare(r, "skip b");
  assertEquals(r.state.get("b.step")!.data[0], 3);
  assertEquals(r.state.get("a.step")!.data[0], 4);
});

gpuTest(
  "Adam in small aligned ranges (forced) matches the whole-tensor path and the reference",
  async (e) => {
    assertEquals(bindingRanges(e, 1000, 128).length, 8);
    assertEquals(bindingRanges(e, 1000, 100).map(([s]) => s).slice(0, 3), [0, 64, 128]); // 256-byte aligned
    const whole = await trial(e, { steps: 3, lr: 1e-2, weightDecay: 0.01 });
    const split = await trial(e, { steps: 3, lr: 1e-2, weightDecay: 0.01, maxChunkElements: 128 });
    compare(split, "ranges of 128");
    // Without clipping every element sees the same arithmetic: bit-identical.
    for (const [name, th] of whole.theta) assertEquals(split.theta.get(name), th, `ranges vs whole: ${name}`);
    compare(
      await trial(e, { steps: 3, lr: 1e-2, weightDecay: 0.01, clipNorm: 1, maxChunkElements: 64 }),
      "clip, 64",
    );
  },
);

gpuTest(
  "Adam reading through textures (whole rows in chunks, tails from storage) gives the storage path's bits",
  async (e) => {
    // Rows of 16 texels (64 floats), 3 rows a chunk: "d" (1000) is 5 chunks and a 40-element tail,
    // "c.weight" (165, not whole vec4s) and the small ones are tails only.
    const textureLayout = { width: 16, rows: 3 };
    const base = { steps: 3, lr: 1e-2, weightDecay: 0.01 };
    const storage = await trial(e, { ...base, reads: "storage" });
    const texture = await trial(e, { ...base, reads: "texture", textureLayout });
    compare(texture, "texture reads");
    for (const [name, th] of storage.theta) {
      assertEquals(texture.theta.get(name), th, `texture vs storage: ${name}`);
      for (const k of ["exp_avg", "exp_avg_sq"]) {
        const key = `${name}.${k}`;
        assertEquals(
          texture.state.get(key)!.data,
          storage.state.get(key)!.data,
          `texture vs storage: ${key}`,
        );
      }
    }
    // More parameters than a row of the step-scalar texture (16 texels), the clip factor's texel in the
    // second row, "b" a step behind the others.
    const shapes: Record<string, number[]> = { b: [64] };
    for (let i = 0; i < 18; i++) shapes[`p${i}`] = [64 * (1 + (i % 3))];
    const many = { ...base, steps: 3, clipNorm: 1, skipB: 1, shapes };
    const manyStorage = await trial(e, { ...many, reads: "storage" });
    const manyTexture = await trial(e, { ...many, reads: "texture", textureLayout });
    compare(manyTexture, "texture reads, 19 parameters");
    for (const [name, th] of manyStorage.theta) {
      assertEquals(manyTexture.theta.get(name), th, `texture vs storage, 19 parameters: ${name}`);
    }
    // Clipping (its norm summed from texture chunks and storage tails) within binding ranges of 128.
    compare(
      await trial(e, { ...base, clipNorm: 1, reads: "texture", textureLayout, maxChunkElements: 128 }),
      "texture reads, clip, ranges of 128",
    );
    const g = rand(4096 + 64 * 5 + 12, 31, -1, 1);
    const gt = e.tensor(g, [g.length]);
    const { norm, scale } = gradNorm([gt], 0.5, { reads: "texture", textureLayout: { width: 64, rows: 4 } });
    const want = gradNormCpu([g], 0.5);
    assertClose([...await norm.toArray(), ...await scale.toArray()], [want.norm, want.scale], NORM, "norm");
    for (const t of [gt, norm, scale]) t.dispose();
    assertThrows(
      () => new Adam([gt], { textureLayout: { width: 24, rows: 2 } }),
      RangeError,
      "power of two",
    );
    // `reads` from JavaScript callers: anything but the two names is refused, not read as storage.
    const bad = { reads: "textures" as "texture" };
    assertThrows(
      () => new Adam([gt], bad),
      RangeError,
      'Cannot create Adam: reads must be "storage" or "texture"',
    );
    assertThrows(() => gradNorm([gt], 1, bad), RangeError, "Cannot compute a gradient norm: reads must be");
  },
);

gpuTest("Adam's vec4 path (size a multiple of 4) is bit-identical to the scalar path", async (e) => {
  // 1000 elements go through the vec4 kernel, 1001 through the scalar one; the first 1000 see the same data.
  const x = rand(1001, 11);
  const pv = new Map([["w", e.tensor(x.subarray(0, 1000), [1000])]]);
  const ps = new Map([["w", e.tensor(x, [1001])]]);
  const opts = { lr: 1e-2, weightDecay: 0.01 };
  const [av, as] = [new Adam(pv, opts), new Adam(ps, opts)];
  for (let s = 0; s < 3; s++) {
    const g = rand(1001, 60 + s, -1, 1);
    const gv = new Map([["w", e.tensor(g.subarray(0, 1000), [1000])]]);
    const gs = new Map([["w", e.tensor(g, [1001])]]);
    av.step(gv);
    as.step(gs);
    for (const t of [...gv.values(), ...gs.values()]) t.dispose();
  }
  const [tv, ts] = [await pv.get("w")!.toArray(), await ps.get("w")!.toArray()];
  assertEquals(tv, ts.subarray(0, 1000));
  const [sv, ss] = [await av.stateDict(), await as.stateDict()];
  assertEquals(sv.get("w.exp_avg_sq")!.data, ss.get("w.exp_avg_sq")!.data.subarray(0, 1000));
  // The norms' partial sums differ only in order: vec4 sums of squares against scalar ones.
  const g = rand(1000, 77, -1, 1);
  const gt = e.tensor(g, [1000]);
  const { norm, scale } = gradNorm([gt], 1);
  const got = (await norm.toArray())[0];
  assertClose(new Float32Array([got]), new Float32Array([gradNormCpu([g], 1).norm]), NORM, "vec4 norm");
  for (const t of [gt, norm, scale, ...pv.values(), ...ps.values()]) t.dispose();
});

gpuTest("a restored optimizer continues exactly like the saved one", async (e) => {
  const shape = [33, 7];
  const n = size(shape);
  const x = rand(n, 3);
  const pa = new Map([["w", e.tensor(x, shape)]]);
  const a = new Adam(pa, { lr: 1e-2, weightDecay: 0.01 });
  const sched = new StepLR(a, { stepSize: 2, gamma: 0.5 });
  const grad = (s: number) => new Map([["w", e.tensor(rand(n, 50 + s), shape)]]);
  for (let s = 0; s < 3; s++) {
    a.step(grad(s), { clipNorm: 1 })?.dispose();
    sched.step();
  }
  const saved = await a.stateDict();
  const pb = new Map([["w", e.tensor(await pa.get("w")!.toArray(), shape)]]);
  const b = new Adam(pb, { lr: 1e-2, weightDecay: 0.01 });
  new StepLR(b, { stepSize: 2, gamma: 0.5 }).setEpoch(sched.epoch);
  b.loadStateDict(saved);
  assertEquals(b.lr, a.lr);
  assertEquals(b.stepCount("w"), 3);
  for (let s = 3; s < 6; s++) {
    for (const opt of [a, b]) opt.step(grad(s), { clipNorm: 1 })?.dispose();
  }
  assertEquals(await pb.get("w")!.toArray(), await pa.get("w")!.toArray());
  assertEquals((await b.stateDict()).get("w.exp_avg_sq"), (await a.stateDict()).get("w.exp_avg_sq"));
  for (const t of [...pa.values(), ...pb.values()]) t.dispose();
  a.dispose();
  b.dispose();
});

gpuTest("Adam and gradNorm handle a parameter larger than one storage binding (2048 × 19699)", async (e) => {
  const shape = [2048, 19699];
  const n = size(shape);
  const avail = Deno.systemMemoryInfo().available;
  if (n * 4 <= e.maxBinding || avail < 6e9) {
    console.warn(`skipped: needs a binding limit below ${n * 4} B and 6 GB free (have ${avail} B)`);
    return;
  }
  assertEquals(bindingRanges(e, n).length > 1, true);
  const x = rand(n, 77), g = rand(n, 78);
  const th = e.tensor(x, shape);
  const gt = e.tensor(g, shape);
  const opt = new Adam(new Map([["head.weight", th]]), { lr: 1e-3, weightDecay: 1e-4 });
  const norm = opt.step(new Map([["head.weight", gt]]), { clipNorm: 1 })!;
  const want = gradNormCpu([g], 1);
  assertClose(await norm.toArray(), [want.norm], NORM, "norm of 2048×19699");
  const got = await th.toArray();
  // First step from zero state: m̂ = g', v̂ = g'², θ ← θ − lr·g' / (|g'| + eps), g' = clip·g + wd·θ.
  const want1 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const gi = g[i] * want.scale + 1e-4 * x[i];
    want1[i] = x[i] - (1e-3 * gi) / (Math.abs(gi) + 1e-8);
  }
  assertClose(got, want1, THETA, "θ of 2048×19699 after one step");
  for (const t of [th, gt, norm]) t.dispose();
  opt.dispose();
});

gpuTest("gradNorm leaves the norm and the clip factor on the GPU", async (e) => {
  const gs = [rand(1, 1), rand(7, 2), rand(9000, 3, -0.01, 0.01)];
  const ts = gs.map((g) => e.tensor(g, [g.length]));
  for (const maxNorm of [0.5, 100]) {
    const { norm, scale } = gradNorm(ts, maxNorm);
    const want = gradNormCpu(gs, maxNorm);
    assertEquals(norm.shape, []);
    assertClose(await norm.toArray(), [want.norm], NORM, "norm");
    assertClose(await scale.toArray(), [want.scale], NORM, "scale");
    norm.dispose();
    scale.dispose();
  }
  for (const t of ts) t.dispose();
});

gpuTest("Adam steps allocate nothing after the first", async (e) => {
  const p = new Map([["w", e.tensor(rand(100, 1), [100])]]);
  const g = new Map([["w", e.tensor(rand(100, 2), [100])]]);
  const opt = new Adam(p);
  opt.step(g, { clipNorm: 1 })?.dispose();
  opt.step(g);
  await e.sync();
  const before = e.stats().inUse;
  for (let i = 0; i < 3; i++) {
    opt.step(g, { clipNorm: 1 })?.dispose();
    opt.step(g);
  }
  await e.sync();
  assertEquals(e.stats().inUse, before);
  opt.dispose();
  for (const t of [...p.values(), ...g.values()]) t.dispose();
});

gpuTest("Adam rejects unknown names and mismatched shapes, naming the key", (e) => {
  const p = new Map([["w", e.tensor(new Float32Array(6), [2, 3])]]);
  const opt = new Adam(p);
  const bad = e.tensor(new Float32Array(6), [3, 2]);
  assertThrows(
    () => opt.step(new Map([["w", bad]])),
    RangeError,
    `"w" has shape [3,2], the parameter has [2,3]`,
  );
  assertThrows(() => opt.step(new Map([["x", bad]])), RangeError, `gradient "x"`);
  assertThrows(
    () => opt.loadStateDict(new Map([["x.step", { data: new Float32Array([1]), shape: [] }]])),
    RangeError,
    `"x.step"`,
  );
  assertThrows(
    () =>
      opt.loadStateDict(
        new Map([
          ["w.step", { data: new Float32Array([1]), shape: [] }],
          ["w.exp_avg", { data: new Float32Array(6), shape: [6] }],
          ["w.exp_avg_sq", { data: new Float32Array(6), shape: [2, 3] }],
        ]),
      ),
    RangeError,
    `"w.exp_avg" has shape [6], expected [2,3]`,
  );
  opt.dispose();
  bad.dispose();
  p.get("w")!.dispose();
});

Deno.test("StepLR halves the learning rate every 10 epochs", () => {
  const opt = { lr: 1e-3 };
  const sched = new StepLR(opt, { stepSize: 10, gamma: 0.5 });
  const seen = [opt.lr];
  for (let e = 1; e <= 35; e++) seen.push(sched.step());
  for (let e = 0; e <= 35; e++) assertEquals(seen[e], 1e-3 * 0.5 ** Math.floor(e / 10), `epoch ${e}`);
  assertEquals([seen[9], seen[10], seen[19], seen[20], seen[30]], [1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4]);
  assertEquals(new StepLR({ lr: 1 }).lrAt(10), 0.5); // defaults: stepSize 10, gamma 0.5
  assertEquals(sched.setEpoch(12), 5e-4);
  assertEquals(opt.lr, 5e-4);
});
