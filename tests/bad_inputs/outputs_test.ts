/**
 * Outputs under failure (issue 12, items 8 and 12): a command that fails — on a bad input, a full disk, a
 * patch it cannot place, Ctrl-C — leaves no partial file and no folder it created; names that become
 * file names cannot leave `--out`; NaN / Inf in `evaluate`'s truth is reported as such.
 */
import { join } from "node:path";
import { requestInterrupt, unsafeFileNamePart } from "../../cli/errors.ts";
import { nonFiniteCells } from "../../model/metrics.ts";
import { encodeNpz, renameAll } from "../../slide/npz.ts";
import { encodeRgbTiff } from "../../slide/tiff_write.ts";
import { assertEquals, tinyCheckpoint } from "../helpers.ts";
import { changes, expectRefused, runCli, snapshot, spawnCli, tempDir } from "./harness.ts";

/** A test that may start the GPU engine (it keeps a pending promise: sanitizers off). */
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: false, sanitizeResources: false, fn });
}

/** A `w × h` RGB TIFF slide with some texture, and a spot CSV of `n` spots on a grid over it. */
async function slideWithSpots(
  dir: string,
  o: { w?: number; h?: number; n?: number; spotsName?: string } = {},
): Promise<{ slide: string; spots: string }> {
  const w = o.w ?? 300, h = o.h ?? 300, n = o.n ?? 4;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0; i < w * h; i++) rgb.set([(i * 7) & 255, (i >> 3) & 255, 128 + (i % 97)], 3 * i);
  const slide = join(dir, "slide.tif");
  await Deno.writeFile(slide, encodeRgbTiff(w, h, rgb));
  const side = Math.ceil(Math.sqrt(n));
  const rows = Array.from({ length: n }, (_, i) => {
    const x = i % side, y = Math.floor(i / side);
    return `${x},${y},${Math.floor(((x + 0.5) * w) / side)},${Math.floor(((y + 0.5) * h) / side)}`;
  });
  const spots = join(dir, o.spotsName ?? "S_spots.csv");
  await Deno.writeTextFile(spots, `x,y,pixel_x,pixel_y\n${rows.join("\n")}\n`);
  return { slide, spots };
}

/**
 * Run `fn` with a disk that fills up at the `k`-th `Deno.writeFile` call (1-based): that call writes the
 * first half of its bytes to the real path, then fails as the OS does (ENOSPC). (/dev/full itself is out of
 * reach: Deno asks for --allow-all for /dev paths, also through a symlink.)
 */
async function withFullDiskAt<T>(k: number, fn: () => Promise<T>): Promise<T> {
  const orig = Deno.writeFile;
  let calls = 0;
  Deno.writeFile = (async (
    path: string | URL,
    data: Uint8Array | ReadableStream<Uint8Array>,
    opts?: Deno.WriteFileOptions,
  ) => {
    if (++calls !== k || !(data instanceof Uint8Array)) return await orig(path, data, opts);
    await orig(path, data.subarray(0, data.length >> 1), opts);
    throw new Error("No space left on device (os error 28)");
  }) as typeof Deno.writeFile;
  try {
    return await fn();
  } finally {
    Deno.writeFile = orig;
  }
}

/** `n` 150 × 150 patches `S_{x}_{y}.tif` in `dir`. */
async function patchFolder(dir: string, n: number): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const rgb = new Uint8Array(150 * 150 * 3);
  for (let p = 0; p < n; p++) {
    for (let i = 0; i < rgb.length; i++) rgb[i] = (i * (p + 3)) & 255;
    await Deno.writeFile(join(dir, `S_${p}_${p % 7}.tif`), encodeRgbTiff(150, 150, rgb));
  }
  return dir;
}

// ---------------------------------------------------------------------------------------------------------
// Names that become file names

test("extract-patches refuses a --section that would leave --out or break the patch names (exit 2)", async () => {
  const dir = await tempDir("section");
  try {
    const { slide, spots } = await slideWithSpots(dir);
    const out = join(dir, "a", "b", "out");
    for (const section of ["../../x", "x/y", "..", "a..b", "x\\y", "", "A.1"]) {
      await expectRefused({
        args: ["extract-patches", slide, "--spots", spots, "--out", out, "--section", section, "--quiet"],
        code: 2,
        names: ["--section", `"${section}"`],
        watch: dir,
      });
    }
    assertEquals(unsafeFileNamePart("A1"), null);
    assertEquals(unsafeFileNamePart("V1_Breast_Cancer"), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("extract-patches refuses spots whose array coordinates are not integers (they name the files)", async () => {
  const dir = await tempDir("coords");
  try {
    const { slide } = await slideWithSpots(dir);
    // Visium tissue_positions: array_row 1.5 would name a patch S_2_1.5.tif (read back as "S_2_1").
    const spots = join(dir, "S_tissue_positions.csv");
    await Deno.writeTextFile(spots, "AAAC-1,1,1,2,100,100\nAAAG-1,1,1.5,2,200,200\n");
    await expectRefused({
      args: ["extract-patches", slide, "--spots", spots, "--out", join(dir, "out"), "--quiet"],
      code: 1,
      names: [spots, "1.5"],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Failures midway: nothing partial, no folder the run made

test("extract-patches that hits a full disk midway leaves no patch and no --out it created", async () => {
  const dir = await tempDir("fulldisk");
  try {
    const { slide, spots } = await slideWithSpots(dir, { n: 6 });
    // --out does not exist: the third patch fills the disk.
    const r = await withFullDiskAt(3, () =>
      expectRefused({
        args: ["extract-patches", slide, "--spots", spots, "--out", join(dir, "new", "out"), "--quiet"],
        code: 1,
        names: [join(dir, "new", "out"), "No space left on device"],
        watch: dir,
      }));
    assertEquals(r.stdout, "");
    // --out exists with an earlier run's patch and another file: both stay as they were, nothing is added.
    const out = join(dir, "out");
    await Deno.mkdir(out);
    await Deno.writeTextFile(join(out, "S_0_0.tif"), "an earlier run's patch");
    await Deno.writeTextFile(join(out, "notes.txt"), "mine");
    await withFullDiskAt(4, () =>
      expectRefused({
        args: ["extract-patches", slide, "--spots", spots, "--out", out, "--quiet"],
        code: 1,
        names: [out, "No space left on device"],
        watch: dir,
      }));
    assertEquals(await Deno.readTextFile(join(out, "S_0_0.tif")), "an earlier run's patch");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("extract-patches whose patch cannot be placed in --out (a folder has its name) keeps the earlier patches", async () => {
  const dir = await tempDir("blocked");
  try {
    const { slide, spots } = await slideWithSpots(dir, { n: 4 });
    const out = join(dir, "out");
    await Deno.mkdir(join(out, "S_1_1.tif"), { recursive: true }); // the last patch's name
    await Deno.writeTextFile(join(out, "S_0_0.tif"), "an earlier run's patch");
    await expectRefused({
      args: ["extract-patches", slide, "--spots", spots, "--out", out, "--quiet"],
      code: 1,
      names: [join(out, "S_1_1.tif"), "folder"],
      watch: dir,
    });
    assertEquals(await Deno.readTextFile(join(out, "S_0_0.tif")), "an earlier run's patch");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("extract-patches that fails before writing (bad slide, bad stain reference) leaves no --out", async () => {
  const dir = await tempDir("early");
  try {
    const { slide, spots } = await slideWithSpots(dir);
    const junk = join(dir, "junk.png");
    await Deno.writeFile(junk, new TextEncoder().encode("not an image at all"));
    const out = join(dir, "out");
    await expectRefused({
      args: ["extract-patches", junk, "--spots", spots, "--out", out, "--quiet"],
      code: 1,
      names: [junk],
      watch: dir,
    });
    await expectRefused({
      args: [
        "extract-patches",
        slide,
        "--spots",
        spots,
        "--out",
        out,
        "--stain",
        "reinhard",
        "--stain-ref",
        junk,
      ],
      code: 1,
      names: [junk],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("extract-patches into a new or an existing --out moves the patches in and leaves no temporary folder", async () => {
  const dir = await tempDir("commit");
  try {
    const { slide, spots } = await slideWithSpots(dir, { n: 4 });
    const names = ["S_0_0.tif", "S_0_1.tif", "S_1_0.tif", "S_1_1.tif"];
    const fresh = join(dir, "x", "fresh");
    assertEquals(
      (await runCli(["extract-patches", slide, "--spots", spots, "--out", fresh, "--quiet"])).code,
      0,
    );
    assertEquals([...Deno.readDirSync(fresh)].map((e) => e.name).sort(), names);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    await Deno.writeTextFile(join(out, "S_0_0.tif"), "old");
    await Deno.writeTextFile(join(out, "notes.txt"), "mine");
    assertEquals(
      (await runCli(["extract-patches", slide, "--spots", spots, "--out", out, "--quiet"])).code,
      0,
    );
    assertEquals([...Deno.readDirSync(out)].map((e) => e.name).sort(), [...names, "notes.txt"].sort());
    assertEquals(
      Array.from(await Deno.readFile(join(out, "S_0_0.tif"))),
      Array.from(await Deno.readFile(join(fresh, "S_0_0.tif"))),
    );
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "S_spots.csv",
      "out",
      "slide.tif",
      "x",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("renameAll is all or nothing: a failed rename puts back the moved files and the replaced ones", async () => {
  const dir = await tempDir("renameall");
  try {
    for (const n of ["a.new", "b.new", "c.new"]) await Deno.writeTextFile(join(dir, n), n);
    await Deno.writeTextFile(join(dir, "a"), "old a");
    let failed = "";
    try {
      // c's source is missing: the third rename fails after a (replacing "old a") and b were moved.
      await renameAll(
        [[join(dir, "a.new"), join(dir, "a")], [join(dir, "b.new"), join(dir, "b")], [
          join(dir, "gone"),
          join(dir, "c"),
        ]],
        (to) => `${to}.parked`,
      );
    } catch (e) {
      failed = (e as Error).message;
    }
    assertEquals(failed.length > 0, true);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["a", "a.new", "b.new", "c.new"]);
    assertEquals(await Deno.readTextFile(join(dir, "a")), "old a");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("predict-patches and predict-slide that fail after the output check leave no empty --out", async () => {
  const dir = await tempDir("predict-early");
  try {
    const patches = await patchFolder(join(dir, "patches"), 2);
    const { slide, spots } = await slideWithSpots(dir);
    const bad = join(dir, "model.pt");
    await Deno.writeTextFile(bad, "this is no checkpoint");
    const out = join(dir, "new", "out");
    await expectRefused({
      args: ["predict-patches", patches, "--weights", bad, "--out", out, "--quiet"],
      code: 1,
      names: [bad],
      watch: dir,
    });
    await expectRefused({
      args: ["predict-slide", slide, "--spots", spots, "--weights", bad, "--out", out, "--quiet"],
      code: 1,
      names: [bad],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("predict-patches that hits a full disk while writing its outputs leaves no --out it created", async () => {
  const dir = await tempDir("predict-full");
  try {
    const patches = await patchFolder(join(dir, "patches"), 2);
    const ckpt = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const out = join(dir, "new", "out");
    // Its writes: the CSVs (writeTextFile), then predictions.npz (writeFile, the first call): disk full.
    await withFullDiskAt(1, () =>
      expectRefused({
        args: ["predict-patches", patches, "--weights", ckpt, "--out", out, "--tta", "single", "--quiet"],
        code: 1,
        names: [out, "No space left on device"],
        watch: dir,
      }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// evaluate: NaN / Inf in the truth

async function evaluateFixture(dir: string, truthValues: number[]) {
  const names = ["S_0_0", "S_1_0", "S_2_0", "S_3_0"], genes = ["FASN", "ERBB2", "GNAS"];
  const pred = join(dir, "pred", "predictions.npz");
  await Deno.mkdir(join(dir, "pred"));
  const p = Float32Array.from({ length: 12 }, (_, i) => Math.sin(i + 1));
  await Deno.writeFile(
    pred,
    encodeNpz({
      target: { dtype: "f4", shape: [4, 3], data: p },
      names: { dtype: "U", shape: [4], data: names },
      target_genes: { dtype: "U", shape: [3], data: genes },
    }),
  );
  const truth = join(dir, "truth.npz");
  await Deno.writeFile(
    truth,
    encodeNpz({
      target: { dtype: "f4", shape: [4, 3], data: Float32Array.from(truthValues) },
      names: { dtype: "U", shape: [4], data: names },
      genes: { dtype: "U", shape: [3], data: genes },
    }),
  );
  const csv = join(dir, "truth.csv");
  const rows = names.map((n, s) =>
    [
      n,
      ...truthValues.slice(3 * s, 3 * s + 3).map((v) =>
        Number.isNaN(v) ? "" : v === Infinity ? "inf" : String(v)
      ),
    ].join(",")
  );
  await Deno.writeTextFile(csv, `,${genes.join(",")}\n${rows.join("\n")}\n`);
  return { pred, truth, csv };
}

test("evaluate with NaN / Inf in the truth says so (count, genes, file), not 'constant column', writes nothing", async () => {
  const dir = await tempDir("evaluate-nan");
  try {
    // ERBB2 has a NaN and an Inf, GNAS a NaN; FASN is fine.
    const t = [1, NaN, NaN, 2, 3, 1, 3, 5, 2, 4, Infinity, 3];
    const { pred, truth, csv } = await evaluateFixture(dir, t);
    const out = join(dir, "metrics");
    await expectRefused({
      args: ["evaluate", pred, "--truth", truth, "--out", out],
      code: 1,
      names: [
        truth,
        "3 values that are not finite",
        "2 NaN",
        "1 infinite",
        "2 genes",
        "ERBB2 (2)",
        "GNAS (1)",
      ],
      not: ["constant"],
      watch: dir,
    });
    await expectRefused({
      args: ["evaluate", pred, "--truth-csv", csv, "--out", out],
      code: 1,
      names: [csv, "3 values that are not finite", "empty or nan cell", "ERBB2 (2)", "GNAS (1)"],
      not: ["constant"],
      watch: dir,
    });
    // Raw counts are never below 0: --log1p on log-scale data with values ≤ −1 is named as the cause.
    const neg = await evaluateFixture(
      await Deno.makeTempDir({ dir }),
      [1, -2, 0.5, 2, 3, 1, 3, 5, 2, 4, 1, 3],
    );
    await expectRefused({
      args: ["evaluate", neg.pred, "--truth", neg.truth, "--log1p", "--out", out],
      code: 1,
      names: [neg.truth, "after --log1p", "ERBB2 (1)", "x ≤ −1"],
      not: ["constant"],
      watch: dir,
    });
    // A finite truth still scores, and a constant column is still reported as constant.
    const ok = await evaluateFixture(await Deno.makeTempDir({ dir }), [1, 7, 2, 2, 7, 1, 3, 7, 2, 4, 7, 3]);
    const r = await runCli(["evaluate", ok.pred, "--truth", ok.truth, "--out", join(dir, "ok")]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout.includes("1 genes have a constant predicted or true column"), true, r.stdout);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("nonFiniteCells counts NaN and ±Inf per gene and finds the first", () => {
  const c = nonFiniteCells(Float32Array.of(1, NaN, 2, -Infinity, 3, Infinity), 3, 2);
  assertEquals([c.count, c.nan, c.inf, Array.from(c.perGene)], [3, 1, 2, [0, 3]]);
  assertEquals(c.first, { spot: 0, gene: 1, value: NaN });
  assertEquals(nonFiniteCells(Float32Array.of(1, 2), 1, 2).first, null);
});

// ---------------------------------------------------------------------------------------------------------
// Ctrl-C: exit 130, nothing new in --out

/**
 * Run `fn` with Ctrl-C "pressed" while the command reads its `k`-th file (`Deno.readFile`, or `Deno.open`:
 * checkpoints and NPZ files are read into one buffer of their size).
 */
async function withCtrlCWhileReading<T>(k: number, fn: () => Promise<T>): Promise<T> {
  const [readFile, open] = [Deno.readFile, Deno.open];
  let calls = 0;
  const count = () => {
    if (++calls === k) requestInterrupt(); // what cli()'s SIGINT listener does on the first Ctrl-C
  };
  Deno.readFile = ((path: string | URL, opts?: Deno.ReadFileOptions) => {
    count();
    return readFile(path, opts);
  }) as typeof Deno.readFile;
  Deno.open = ((path: string | URL, opts?: Deno.OpenOptions) => {
    count();
    return open(path, opts);
  }) as typeof Deno.open;
  try {
    return await fn();
  } finally {
    [Deno.readFile, Deno.open] = [readFile, open];
  }
}

test("Ctrl-C while evaluate, visualize, convert or predict-slide runs: exit 130, nothing written", async () => {
  const dir = await tempDir("ctrlc-short");
  try {
    const { pred, truth } = await evaluateFixture(dir, [1, 7, 2, 2, 6, 1, 3, 5, 2, 4, 3, 3]);
    const pt = new URL("../fixtures/weights/model_base.pt", import.meta.url).pathname;
    const { slide, spots } = await slideWithSpots(dir);
    const ckpt = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const runs = [
      ["evaluate", pred, "--truth", truth, "--out", join(dir, "m")],
      ["visualize", pred, "--gene", "FASN", "--out", join(dir, "map.png")],
      ["convert", pt, join(dir, "model.safetensors")],
      [
        "predict-slide",
        slide,
        "--spots",
        spots,
        "--weights",
        ckpt,
        "--out",
        join(dir, "o"),
        "--tta",
        "single",
      ],
    ];
    for (const args of runs) {
      await withCtrlCWhileReading(
        1,
        () => expectRefused({ args, code: 130, names: ["Interrupted"], watch: dir }),
      );
    }
    // Without Ctrl-C the same runs succeed (so the 130 above came from the interruption).
    for (const args of runs) assertEquals((await runCli(args)).code, 0, args.join(" "));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Start `args`, send SIGINT once stderr shows `progress`, and return the exit status and stderr. */
async function interruptAfter(args: string[], progress: RegExp) {
  const child = spawnCli(args).spawn();
  const dec = new TextDecoder();
  let err = "";
  let sent = false;
  const stdout = new Response(child.stdout).text();
  const reader = child.stderr.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    err += dec.decode(value);
    if (!sent && progress.test(err)) {
      child.kill("SIGINT");
      sent = true;
    }
  }
  const status = await child.status;
  return { status, sent, stderr: err, stdout: await stdout };
}

test("Ctrl-C during extract-patches: exit 130 (not death by signal), --out holds nothing new", async () => {
  const dir = await tempDir("sigint-extract");
  try {
    const { slide, spots } = await slideWithSpots(dir, { w: 1500, h: 1500, n: 40000 });
    for (const out of [join(dir, "out"), join(dir, "existing")]) {
      if (out.endsWith("existing")) {
        await Deno.mkdir(out);
        await Deno.writeTextFile(join(out, "keep.txt"), "");
      }
      const before = await snapshot(dir);
      const r = await interruptAfter(
        ["extract-patches", slide, "--spots", spots, "--out", out, "--crop-size", "16"],
        /patches \d+\/40000/,
      );
      assertEquals(r.sent, true, `no progress was printed:\n${r.stderr}`);
      assertEquals([r.status.code, r.status.signal], [130, null], r.stderr);
      assertEquals(r.stderr.includes("Interrupted"), true, r.stderr);
      assertEquals(changes(before, await snapshot(dir)), [], `left in ${dir}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("Ctrl-C during predict-patches: exit 130, no --out folder", async () => {
  const dir = await tempDir("sigint-predict");
  try {
    const patches = await patchFolder(join(dir, "patches"), 200);
    const ckpt = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const before = await snapshot(dir);
    const r = await interruptAfter(
      [
        "predict-patches",
        patches,
        "--weights",
        ckpt,
        "--out",
        join(dir, "out"),
        "--tta",
        "tta",
        "--batch-size",
        "4",
      ],
      /patches \d+\/200/,
    );
    assertEquals(r.sent, true, `no progress was printed:\n${r.stderr}`);
    assertEquals([r.status.code, r.status.signal], [130, null], r.stderr);
    assertEquals(changes(before, await snapshot(dir)), [], `left in ${dir}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
