/**
 * `--compress` on the commands that write NPZ (predict-patches, predict-slide, train): the arrays are
 * deflated as `np.savez_compressed` does, read back the same, and numpy opens the files; without it the
 * members stay stored as `np.savez`.
 */
import { join } from "node:path";
import { runPredictPatches, writeOutputs } from "../../cli/predict_patches.ts";
import { runPredictSlide, type SlidePredictions, writeSlideOutputs } from "../../cli/predict_slide.ts";
import { runTrain } from "../../cli/train.ts";
import { decodeNpz, type NpyArray } from "../../slide/npy.ts";
import { encodePng } from "../../slide/png.ts";
import { openZip } from "../../weights/zip.ts";
import { assertEquals, rand, tinyCheckpoint } from "../helpers.ts";
import { tinyHer2st } from "./tiny_her2st.ts";

const PYTHON = "/usr/bin/python3";

/** The zip compression method of every member of an npz file (0 stored, 8 deflate), by member name. */
async function methods(path: string): Promise<Record<string, number>> {
  const zip = openZip(await Deno.readFile(path), path);
  return Object.fromEntries([...zip.entries.values()].map((e) => [e.name, e.method]));
}

/** A JSON-safe form of the arrays of an npz file (bigints as strings). */
async function arrays(path: string): Promise<Record<string, unknown>> {
  const z = decodeNpz(await Deno.readFile(path), path);
  const plain = (a: NpyArray) => ({ shape: a.shape, data: [...a.data].map(String) });
  return Object.fromEntries(Object.entries(z).map(([k, a]) => [k, plain(a)]));
}

/** numpy's view of npz files: zipfile's CRC check and each array's shape; null (said) without numpy. */
async function numpyOpens(paths: string[]): Promise<Record<string, unknown>[] | null> {
  const code = `
import json, sys, zipfile, numpy as np
out = []
for p in sys.argv[1:]:
    f = np.load(p)
    out.append({'bad': zipfile.ZipFile(p).testzip(), **{k: list(f[k].shape) for k in f.files}})
print(json.dumps(out))`;
  let r: Deno.CommandOutput;
  try {
    r = await new Deno.Command(PYTHON, { args: ["-c", code, ...paths], stdout: "piped", stderr: "piped" })
      .output();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    console.warn(`skipped: the numpy check needs ${PYTHON}`);
    return null;
  }
  const err = new TextDecoder().decode(r.stderr);
  if (/No module named 'numpy'/.test(err)) {
    console.warn(`skipped: the numpy check needs numpy for ${PYTHON}`);
    return null;
  }
  if (!r.success) throw new Error(`python failed: ${err}`);
  return JSON.parse(new TextDecoder().decode(r.stdout));
}

/**
 * Every member of `compressed` deflated and of `stored` stored, the same arrays in both, and numpy opens
 * `compressed` (CRCs right) with the same shapes.
 */
async function assertCompressed(compressed: string, stored: string): Promise<void> {
  const m = await methods(compressed), s = await methods(stored);
  assertEquals(Object.keys(m), Object.keys(s));
  assertEquals(Object.keys(m).length > 0, true, compressed);
  assertEquals(Object.values(m).every((x) => x === 8), true, `${compressed}: ${JSON.stringify(m)}`);
  assertEquals(Object.values(s).every((x) => x === 0), true, `${stored}: ${JSON.stringify(s)}`);
  const ours = await arrays(compressed);
  assertEquals(ours, await arrays(stored));
  const np = await numpyOpens([compressed]);
  if (!np) return;
  const shapes = Object.fromEntries(
    Object.entries(ours).map(([k, a]) => [k, (a as { shape: number[] }).shape]),
  );
  assertEquals(np[0], { bad: null, ...shapes }, compressed);
}

Deno.test("predict-patches' and predict-slide's writers deflate predictions.npz with compress", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-compress-" });
  try {
    const P = 30, nT = 4, nA = 50;
    const common = {
      names: Array.from({ length: P }, (_, i) => `C2_${i % 6}_${Math.floor(i / 6)}`),
      targetGenes: ["FASN", "ERBB2", "GNAS", "MYC"],
      auxGenes: Array.from({ length: nA }, (_, i) => `A${i}`),
      target: rand(P * nT, 1),
      aux: Float32Array.from(rand(P * nA, 2), (v) => Math.round(v * 100) / 100),
      tumorProb: rand(P, 3, 0, 1),
    };
    const slide: SlidePredictions = {
      ...common,
      pixel: Float64Array.from({ length: 2 * P }, (_, i) => 100 + 37.5 * i),
      grid: Int32Array.from({ length: 2 * P }, (_, i) => i % 7),
      topLeft: Float64Array.from({ length: 2 * P }, (_, i) => 25 + 37.5 * i),
      mode: "spots",
      patchPx: 150,
      slide: "C2.jpg",
      section: "C2",
      weights: "model_base.pt",
      tta: "single",
      mpp: null,
    };
    for (const compress of [false, true]) {
      await writeOutputs(join(dir, `patches-${compress}`), common, { compress });
      await writeSlideOutputs(join(dir, `slide-${compress}`), slide, { compress });
    }
    for (const what of ["patches", "slide"]) {
      await assertCompressed(
        join(dir, `${what}-true/predictions.npz`),
        join(dir, `${what}-false/predictions.npz`),
      );
    }
    // The CSVs do not change.
    for (const f of ["target_count_pred.csv", "aux_count_pred.csv", "tumor_pred.csv"]) {
      assertEquals(
        await Deno.readTextFile(join(dir, "slide-true", f)),
        await Deno.readTextFile(join(dir, "slide-false", f)),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "predict-patches --compress and predict-slide --compress write a deflated predictions.npz",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-compress-cli-" });
    try {
      const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
      // A 200 × 160 "slide" with three spots, and three 40 × 40 patches.
      const [W, H] = [200, 160];
      await Deno.writeFile(join(dir, "S1.png"), encodePng(W, H, Uint8Array.from(rand(W * H * 3, 7, 0, 255))));
      const spots = [[1, 1, 50, 50], [2, 1, 110, 60], [1, 2, 70, 110]];
      await Deno.writeTextFile(
        join(dir, "S1_spots.csv"),
        "x,y,pixel_x,pixel_y\n" + spots.map((s) => s.join(",")).join("\n") + "\n",
      );
      await Deno.mkdir(join(dir, "patches"));
      for (const [i, [x, y]] of spots.entries()) {
        const patch = Uint8Array.from(rand(40 * 40 * 3, 8 + i, 0, 255));
        await Deno.writeFile(join(dir, "patches", `S1_${x}_${y}.png`), encodePng(40, 40, patch));
      }
      const common = ["--weights", weights, "--tta", "single", "--quiet", "--tune", "off"];
      for (const compress of [false, true]) {
        const flag = compress ? ["--compress"] : [];
        await runPredictPatches([
          join(dir, "patches"),
          ...common,
          "--out",
          join(dir, `p-${compress}`),
          ...flag,
        ]);
        await runPredictSlide([
          join(dir, "S1.png"),
          ...common,
          "--spots",
          join(dir, "S1_spots.csv"),
          "--crop-size",
          "40",
          "--out",
          join(dir, `s-${compress}`),
          ...flag,
        ]);
      }
      for (const what of ["p", "s"]) {
        await assertCompressed(
          join(dir, `${what}-true/predictions.npz`),
          join(dir, `${what}-false/predictions.npz`),
        );
      }
      assertEquals(
        (await arrays(join(dir, "s-true/predictions.npz"))).names,
        { shape: [3], data: ["S1_1_1", "S1_2_1", "S1_1_2"] },
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "train --compress deflates val_*.npz and test_*.npz",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-compress-train-" });
    try {
      await tinyHer2st(join(dir, "her2st"));
      const out = join(dir, "run");
      await runTrain([
        ...["--dataset", "her2st", "--root", join(dir, "her2st"), "--backbone", "tiny", "--epochs", "1"],
        ...["--crop-size", "24", "--image-size", "32", "--batch-size", "4", "--n-target", "2"],
        ...["--val-sections", "X2", "--test-sections", "X3", "--out", out, "--quiet", "--tune", "off"],
        "--compress",
      ]);
      const files = ["val_predictions", "val_truth", "test_predictions", "test_truth", "test_baseline"]
        .map((f) => join(out, `${f}.npz`));
      for (const f of files) {
        const m = await methods(f);
        assertEquals(Object.values(m).length > 0 && Object.values(m).every((x) => x === 8), true, f);
      }
      const truth = await arrays(join(out, "test_truth.npz"));
      assertEquals(truth.names, {
        shape: [9],
        data: Array.from({ length: 9 }, (_, i) => `X3_${1 + (i % 3)}_${1 + Math.floor(i / 3)}`),
      });
      const np = await numpyOpens(files);
      if (np) assertEquals(np.map((r) => r.bad), files.map(() => null));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
