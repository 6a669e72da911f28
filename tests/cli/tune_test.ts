/**
 * `he2gene tune` and the tuning cache: tune() times every candidate and only lets a faster one replace the
 * default; the table is stored per adapter under $XDG_CACHE_HOME/he2gene atomically; prediction's
 * `--tune cached|auto|off` loads it, ignores a malformed or foreign one with a warning, and the ops then
 * run the stored choice.
 */
import { runCli, tempDir } from "../bad_inputs/harness.ts";
import { UsageError } from "../../cli/errors.ts";
import { assertEquals, assertThrows, engine } from "../helpers.ts";
import {
  defaultTuneClock,
  nothingToTune,
  resnetConvGeometries,
  tune,
  TUNE_MARGIN,
  tuneCases,
  unknownTuneOp,
} from "../../model/tune.ts";
import { hasSubgroups } from "../../kernels/_wgsl.ts";
import { RESNET50 } from "../../model/resnet.ts";
import { conv2dForward, conv2dShapeClass } from "../../kernels/conv2d/mod.ts";
import {
  chooseMatmulKernel,
  matmulCandidates,
  matmulShapeClass,
  matmulVariantId,
} from "../../kernels/matmul.ts";
import { chosenVariant, tuningKey, useTuning, withVariant } from "../../kernels/tuning.ts";
import {
  HE2GENE_VERSION,
  loadTuning,
  parseTuneMode,
  prepareTuning,
  saveTuning,
  type StoredTuning,
  tuningPath,
} from "../../cli/tune.ts";

function cliTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: false, sanitizeResources: false, fn });
}

async function withCache<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await tempDir("tune");
  const before = Deno.env.get("XDG_CACHE_HOME");
  Deno.env.set("XDG_CACHE_HOME", dir);
  try {
    return await fn(dir);
  } finally {
    if (before === undefined) Deno.env.delete("XDG_CACHE_HOME");
    else Deno.env.set("XDG_CACHE_HOME", before);
    await Deno.remove(dir, { recursive: true });
  }
}

cliTest(
  "tune times every matmul candidate and keeps the default unless one is faster by the margin",
  async () => {
    const e = await engine();
    // Small enough that only the 8×8 register blocks (and the tiled kernel) are candidates: cheap to compile.
    const [m, n, k] = [5, 6, 20];
    const { table, results } = await tune(e, { only: ["matmul"], matmulShapes: [[m, n, k]], quick: true });
    assertEquals(results.length, 1);
    const r = results[0];
    assertEquals(r.shapeClass, matmulShapeClass(m, n, k));
    // Every candidate but the default itself (timed as "default").
    const def = matmulVariantId(chooseMatmulKernel(e, m, n, k));
    assertEquals(r.timings.map((t) => t.variant), matmulCandidates(e, m, n, k).filter((v) => v !== def));
    for (const t of r.timings) assertEquals(t.error, undefined, `${t.variant} failed: ${t.error}`);
    const key = tuningKey("matmul", r.shapeClass);
    if (r.chosen === "default") {
      assertEquals(table.entries[key], undefined);
    } else {
      assertEquals(table.entries[key], r.chosen);
      const best = r.timings.find((t) => t.variant === r.chosen)!;
      if (!(best.ms! < r.default.ms! * (1 - TUNE_MARGIN))) throw new Error("chosen variant is not faster");
      // …and still faster when timed alternately with the default.
      const c = r.confirmed!;
      if (!(c.variantMs < c.defaultMs * (1 - TUNE_MARGIN))) throw new Error("chosen without confirmation");
    }
  },
);

cliTest(
  "tune on the gpu clock times runs with timestamp queries and still keeps the default unless beaten",
  async () => {
    const e = await engine();
    if (!e.device.features.has("timestamp-query")) {
      console.log("skipped: the adapter has no timestamp-query");
      return;
    }
    // llvmpipe defaults to the wall clock (software adapter); a hardware adapter to the gpu clock.
    assertEquals(defaultTuneClock(e), e.adapterInfo.software ? "wall" : "gpu");
    const [m, n, k] = [64, 48, 96];
    const { results } = await tune(e, {
      only: ["matmul"],
      matmulShapes: [[m, n, k]],
      quick: true,
      clock: "gpu",
    });
    const r = results[0];
    // Kernel time alone: positive and far below one host wait for completion (≥ 1 ms here).
    if (!(r.default.ms! > 0 && r.default.ms! < 50)) throw new Error(`default timed ${r.default.ms} ms`);
    for (const t of r.timings) {
      assertEquals(t.error, undefined, `${t.variant} failed: ${t.error}`);
      if (!(t.ms! > 0)) throw new Error(`${t.variant} timed ${t.ms} ms`);
    }
    if (r.chosen !== "default") {
      const c = r.confirmed!;
      if (!(c.variantMs < c.defaultMs * (1 - TUNE_MARGIN))) throw new Error("chosen without confirmation");
    }
  },
);

cliTest(
  "tune --max-seconds stops starting cases and reports each finished one with the table so far",
  async () => {
    const e = await engine();
    const shapes: [number, number, number][] = [[5, 6, 20], [7, 9, 12], [3, 4, 8]];
    const seen: { done: number; total: number; entries: number }[] = [];
    const full = await tune(e, { only: ["matmul"], matmulShapes: shapes, quick: true });
    assertEquals([full.results.length, full.total], [3, 3]);
    // A budget spent before the first case would start: no case runs (a case, once started, finishes).
    const cut = await tune(e, {
      only: ["matmul"],
      matmulShapes: shapes,
      quick: true,
      maxSeconds: 1e-6,
      onProgress: (done, total, _r, table) =>
        seen.push({ done, total, entries: Object.keys(table.entries).length }),
    });
    assertEquals(cut.total, 3);
    assertEquals(cut.results.length, 0, "the budget was spent before the first case");
    assertEquals(seen, []);
    // Each finished case is reported with the table of the cases so far (what the CLI stores each time).
    const one = await tune(e, {
      only: ["matmul"],
      matmulShapes: shapes,
      quick: true,
      onProgress: (done, total, _r, table) =>
        seen.push({ done, total, entries: Object.keys(table.entries).length }),
    });
    assertEquals(seen.map((s) => [s.done, s.total]), [[1, 3], [2, 3], [3, 3]]);
    assertEquals(seen[2].entries, Object.keys(one.table.entries).length);
    const r = await runCli(["tune", "--max-seconds", "0", "--only", "matmul"]);
    assertEquals(r.code, 2);
    assertEquals(
      r.stderr.includes("--max-seconds must be a number of seconds > 0, current value is 0"),
      true,
      r.stderr,
    );
  },
);

cliTest("tune --clock accepts gpu or wall only", async () => {
  const r = await runCli(["tune", "--clock", "cpu", "--only", "matmul"]);
  assertEquals(r.code, 2);
  assertEquals(r.stderr.includes("--clock must be gpu or wall, current value is cpu"), true, r.stderr);
});

cliTest("tune --only names an unknown op and the tunable ones; reduce.rows is one", async () => {
  const r = await runCli(["tune", "--only", "batchnorm,softmax"]);
  assertEquals(r.code, 2);
  assertEquals(r.stderr.includes('--only: unknown op "softmax" (tunable: conv2d.fwd, '), true, r.stderr);
  assertEquals(r.stderr.includes("batchnorm.dx, reduce.rows)"), true, r.stderr);
  assertEquals(unknownTuneOp(["reduce", "batchnorm.s", "conv2d"]), null);
  assertEquals(unknownTuneOp(undefined), null);
  // The row reductions are a case only where there is more than one variant (subgroups; not llvmpipe).
  const e = await engine();
  const rows = tuneCases(e, { only: ["reduce"], trainBatchSize: 2 });
  assertEquals(rows.map((c) => c.shapeClass), hasSubgroups(e) ? ["r512", "r8192"] : []);
  // Nothing to time is refused, so that no empty table replaces a stored one.
  if (!hasSubgroups(e)) {
    const none = await runCli(["tune", "--only", "reduce.rows"]);
    assertEquals(none.code, 2);
    assertEquals(
      none.stderr.includes("--only: reduce.rows has nothing to tune on ") &&
        none.stderr.includes("(reduce.rows has a second variant only where the device has subgroups)"),
      true,
      none.stderr,
    );
  }
  assertEquals(nothingToTune(e, { only: ["batchnorm.stats"], trainBatchSize: 2 }), null);
  assertEquals(nothingToTune(e, {}), null);
  assertEquals(
    nothingToTune(e, { only: ["batchnorm"], trainBatchSize: 0 })?.startsWith(
      "batchnorm has nothing to tune on ",
    ),
    true,
  );
});

cliTest(
  "tune covers ResNet-50: every conv shape class of inference and training, the heads, 1024³",
  async () => {
    const e = await engine();
    const cases = tuneCases(e, { batchSize: 8, trainBatchSize: 2 });
    const count = (op: string) => cases.filter((c) => c.op === op).length;
    const geoms = resnetConvGeometries(RESNET50, 8, 224);
    assertEquals(geoms.length, 23, "distinct conv geometries of ResNet-50 (53 convolutions)");
    assertEquals(new Set(geoms.map(conv2dShapeClass)).size, count("conv2d.fwd"));
    assertEquals(count("conv2d.dx"), count("conv2d.fwd"));
    assertEquals(count("conv2d.dw"), count("conv2d.fwd"));
    assertEquals(count("matmul") >= 3, true);
    for (const c of cases) {
      if (c.candidates.length < 2) throw new Error(`${c.op} ${c.label}: fewer than 2 candidates`);
    }
    const wino = cases.filter((c) => c.candidates.includes("winograd/f4")).map((c) => c.label);
    assertEquals(wino.every((l) => l.includes(",3,3] s1")), true, wino.join("; "));
  },
);

cliTest(
  "tune times an inference convolution as the folded network runs it (bias and ReLU fused), training ones bare",
  async () => {
    const e = await engine();
    const cases = tuneCases(e, { batchSize: 1, trainBatchSize: 1, imageSize: 16, only: ["conv2d"] });
    const fwd = cases.find((c) => c.op === "conv2d.fwd")!, dx = cases.find((c) => c.op === "conv2d.dx")!;
    const f = fwd.setup(e), d = dx.setup(e);
    try {
      assertEquals(
        [f.inputs.length, d.inputs.length],
        [4, 3],
        "inference inputs x, w, dy, bias; training x, w, dy",
      );
      const [x, w, , bias] = f.inputs;
      const got = await f.run().toArray();
      const want = await conv2dForward(x, w, { stride: 2, padding: 3, bias, relu: true }).toArray();
      assertEquals(fwd.label, `x[${x.shape}] w[${w.shape}] s2 p3`);
      assertEquals(got, want);
      if (!got.some((v) => v === 0) || !got.some((v) => v > 0)) throw new Error("no ReLU in the timed run");
    } finally {
      f.release?.();
      d.release?.();
      for (const t of [...f.inputs, ...d.inputs]) t.dispose();
    }
  },
);

cliTest("a stored table is applied per op and shape class; withVariant overrides it", async () => {
  const e = await engine();
  const cls = matmulShapeClass(64, 64, 64);
  const [first, second] = matmulCandidates(e, 64, 64, 64);
  useTuning(e, { entries: { [tuningKey("matmul", cls)]: first } });
  try {
    assertEquals(chosenVariant(e, "matmul", cls), first);
    assertEquals(chosenVariant(e, "matmul", "other class"), undefined);
    withVariant("matmul", second, () => assertEquals(chosenVariant(e, "matmul", cls), second));
    assertEquals(chosenVariant(e, "matmul", cls), first);
  } finally {
    useTuning(e, null);
  }
  assertEquals(chosenVariant(e, "matmul", cls), undefined);
});

cliTest(
  "the cache: keyed by adapter and version, atomic, malformed or foreign files ignored with a warning",
  async () => {
    const e = await engine();
    await withCache(async (dir) => {
      const path = tuningPath(e)!;
      assertEquals(path.startsWith(`${dir}/he2gene/tuning-`), true, path);
      assertEquals(await loadTuning(e), null);
      const entries = {
        [tuningKey("matmul", matmulShapeClass(64, 64, 64))]: matmulCandidates(e, 64, 64, 64)[0],
      };
      const a = e.adapterInfo;
      const t: StoredTuning = {
        version: HE2GENE_VERSION,
        adapter: {
          name: a.name,
          vendor: a.vendor,
          architecture: a.architecture,
          device: a.device,
          backend: a.backend,
        },
        created: new Date().toISOString(),
        options: { batchSize: 8, trainBatchSize: 2, quick: true },
        entries,
      };
      assertEquals(await saveTuning(e, t), path);
      assertEquals([...Deno.readDirSync(`${dir}/he2gene`)].map((f) => f.name), [path.split("/").pop()]);
      assertEquals((await loadTuning(e))?.entries, entries);
      const said: string[] = [];
      assertEquals(
        (await prepareTuning(e, "cached", (s) => said.push(s))).includes("tuned table (1 choices)"),
        true,
      );
      assertEquals(
        chosenVariant(e, "matmul", matmulShapeClass(64, 64, 64)),
        entries[Object.keys(entries)[0]],
      );
      assertEquals((await prepareTuning(e, "off")).includes("built-in defaults"), true);
      assertEquals(chosenVariant(e, "matmul", matmulShapeClass(64, 64, 64)), undefined);
      // A reduced-precision variant named by hand (tune never writes one): the note says so.
      const f16Key = tuningKey("matmul", matmulShapeClass(1024, 1024, 1024));
      await saveTuning(e, { ...t, entries: { ...entries, [f16Key]: "tiled/64x64/f16" } });
      const note = await prepareTuning(e, "cached");
      assertEquals(note.includes("tuned table (2 choices)"), true, note);
      assertEquals(note.includes("1 of them reduced precision (f16 operands)"), true, note);
      await prepareTuning(e, "off");
      await saveTuning(e, t);

      // Another version: ignored, with a warning naming the file.
      await Deno.writeTextFile(path, JSON.stringify({ ...t, version: "0.0.0-other" }));
      const w1: string[] = [];
      assertEquals(await loadTuning(e, (s) => w1.push(s)), null);
      assertEquals(
        w1.length === 1 && w1[0].includes(path) && w1[0].includes("another adapter or he2gene version"),
        true,
      );
      // Malformed JSON: ignored, with a warning.
      await Deno.writeTextFile(path, "{ not json");
      const w2: string[] = [];
      assertEquals(await loadTuning(e, (s) => w2.push(s)), null);
      assertEquals(w2.length === 1 && w2[0].includes("is not a tuning table"), true, w2.join("\n"));
      const w3: string[] = [];
      assertEquals((await prepareTuning(e, "cached", (s) => w3.push(s))).includes("built-in defaults"), true);
    });
    useTuning(e, null);
  },
);

cliTest("--tune is checked; tune --only refuses unknown ops (exit 2, naming the option)", async () => {
  assertEquals(parseTuneMode(undefined), "cached");
  assertEquals(parseTuneMode("auto"), "auto");
  assertThrows(() => parseTuneMode("fast"), UsageError, "--tune must be cached, auto or off");
  const r = await runCli(["tune", "--only", "softmax"]);
  assertEquals(r.code, 2, r.stderr);
  assertEquals(r.stderr.includes('--only: unknown op "softmax"'), true, r.stderr);
});
