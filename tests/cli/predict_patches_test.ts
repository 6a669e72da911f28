/**
 * Parity of `predict-patches` with PyTorch: tests/fixtures/parity/make_parity.py builds HE2Gene-Base in
 * PyTorch (narrow, and torchvision's full ResNet-50 when torchvision is installed), saves it with
 * torch.save (zip, legacy, fp16, Spat key names) and runs the original's patch pipeline on the demo
 * patches; we run ours on the same files and compare.
 */
import { join } from "node:path";
import { predictPatches, type Tta } from "../../cli/predict_patches.ts";
import { readH5ad } from "../../slide/h5ad.ts";
import {
  assertClose,
  assertEquals,
  assertRejects,
  engine,
  gpuTest,
  sharedData,
  tinyCheckpoint,
  TOL,
} from "../helpers.ts";

const PYTHON = "/usr/bin/python3";
const SCRIPT = new URL("../fixtures/parity/make_parity.py", import.meta.url).pathname;

async function python(args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await new Deno.Command(PYTHON, { args, stdout: "piped", stderr: "piped" }).output();
    const dec = new TextDecoder();
    return { ok: r.success, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
  } catch (e) {
    return { ok: false, out: (e as Error).message };
  }
}

async function hasModules(mods: string[]): Promise<boolean> {
  return (await python(["-c", `import ${mods.join(", ")}`])).ok;
}

interface Expected {
  names: string[];
  cases: { model: string; mode: string; target: Float32Array; aux: Float32Array; tumor: Float32Array }[];
}

async function makeReference(
  width: "narrow" | "full",
  exps: string,
): Promise<{ dir: string; exp: Expected }> {
  const dir = await Deno.makeTempDir({ prefix: `he2gene-parity-${width}-` });
  const r = await python([SCRIPT, dir, exps, width]);
  if (!r.ok) throw new Error(`make_parity.py failed:\n${r.out}`);
  const m = JSON.parse(await Deno.readTextFile(join(dir, "expected.json")));
  const b = await Deno.readFile(join(dir, "expected.bin"));
  const all = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const P = m.names.length, nT = 250, nA = 19699, per = nT + nA + 1;
  const cases = m.cases.map((c: { model: string; mode: string }, ci: number) => {
    const target = new Float32Array(P * nT), aux = new Float32Array(P * nA), tumor = new Float32Array(P);
    for (let p = 0; p < P; p++) {
      const o = (ci * P + p) * per;
      target.set(all.subarray(o, o + nT), p * nT);
      aux.set(all.subarray(o + nT, o + nT + nA), p * nA);
      tumor[p] = all[o + per - 1];
    }
    return { ...c, target, aux, tumor };
  });
  return { dir, exp: { names: m.names, cases } };
}

async function compare(dir: string, exps: string, exp: Expected, ckpt: string, model: string, mode: Tta) {
  const c = exp.cases.find((x) => x.model === model && x.mode === mode)!;
  const out = join(dir, `out-${ckpt}-${mode}`);
  const p = await predictPatches(exps, {
    weights: join(dir, ckpt),
    out,
    batchSize: 2,
    tta: mode,
    quiet: true,
    engine: await engine(),
  });
  assertEquals(p.names, exp.names);
  const what = `${ckpt} ${mode}`;
  assertClose(p.target, c.target, TOL.model, `${what} target`);
  assertClose(p.aux, c.aux, TOL.model, `${what} aux`);
  assertEquals(
    Array.from(p.tumorProb, (v) => v > 0.5),
    Array.from(c.tumor, (v) => v > 0.5),
    `${what} labels`,
  );
  return out;
}

const exps = sharedData("he2gene/exps");
const torchOk = await hasModules(["torch", "PIL"]);
const visionOk = torchOk && await hasModules(["torchvision"]);
if (!torchOk) console.warn(`skipped: PyTorch parity tests need ${PYTHON} with torch and PIL (python3-torch)`);

Deno.test({
  name:
    "predict-patches matches PyTorch on the demo patches (narrow ResNet): zip, legacy, fp16, Spat keys, all TTA modes",
  ignore: !exps || !torchOk,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const { dir, exp } = await makeReference("narrow", exps!);
    try {
      const out = await compare(dir, exps!, exp, "model_base.pt", "base", "tta");
      await compare(dir, exps!, exp, "model_base.pt", "base", "single");
      await compare(dir, exps!, exp, "model_base.pt", "base", "grid");
      await compare(dir, exps!, exp, "model_base_legacy.pt", "base", "tta");
      await compare(dir, exps!, exp, "model_spat.pt", "base", "tta");
      await compare(dir, exps!, exp, "model_base_fp16.pt", "fp16", "tta");
      // The original's file format, and an npz that numpy loads.
      const tumor = await Deno.readTextFile(join(out, "tumor_pred.csv"));
      assertEquals(tumor.split("\n")[0], ",Annotation");
      assertEquals(tumor.trim().split("\n").slice(1).every((l) => /^D2_6_2\d,(True|False)$/.test(l)), true);
      const header = (await Deno.readTextFile(join(out, "target_count_pred.csv"))).split("\n")[0];
      assertEquals(header.startsWith(",target_0,target_1,"), true);
      const np = await python([
        "-c",
        `import numpy as np; d = np.load("${join(out, "predictions.npz")}"); ` +
        `print(d["target"].shape, d["aux"].shape, d["tumor_prob"].shape, d["target"].dtype, list(d["names"]))`,
      ]);
      assertEquals(
        np.out.trim(),
        "(4, 250) (4, 19699) (4,) float32 ['D2_6_22', 'D2_6_23', 'D2_6_24', 'D2_6_25']",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "predict-patches matches PyTorch with torchvision's full-width ResNet-50 (HE2Gene-Base, 8-fold TTA)",
  ignore: !exps || !visionOk,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const { dir, exp } = await makeReference("full", exps!);
    try {
      await compare(dir, exps!, exp, "model_base.pt", "base", "tta");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
if (torchOk && !visionOk) {
  console.warn("skipped: the full-width parity test needs torchvision (python3-torchvision)");
}

gpuTest("an unreadable patch is named and no output folder is left behind", async (e) => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-bad-" });
  try {
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"), null);
    const patches = join(dir, "patches");
    await Deno.mkdir(patches);
    await Deno.writeTextFile(join(patches, "S1_1_1.tif"), "not a tiff");
    const out = join(dir, "out");
    await assertRejects(
      () => predictPatches(patches, { weights, out, batchSize: 1, tta: "single", quiet: true, engine: e }),
      Error,
      "Cannot read patch " + join(patches, "S1_1_1.tif"),
    );
    assertEquals([...Deno.readDirSync(dir)].map((x) => x.name).sort(), ["patches", "tiny.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest(
  "our safetensors checkpoints carry the gene names; a gene list of the wrong length is refused",
  async (e) => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-st-" });
    try {
      const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"), {
        target: ["G1", "G2", "G3"],
        aux: ["a", "b", "c", "d", "e"],
      });
      const patches = sharedData("he2gene/exps");
      if (!patches) return;
      const out = join(dir, "out");
      const p = await predictPatches(patches, {
        weights,
        out,
        batchSize: 4,
        tta: "single",
        quiet: true,
        engine: e,
      });
      assertEquals(p.targetGenes, ["G1", "G2", "G3"]);
      assertEquals((await Deno.readTextFile(join(out, "target_count_pred.csv"))).split("\n")[0], ",G1,G2,G3");
      const genes = join(dir, "genes.txt");
      await Deno.writeTextFile(genes, "A\nB\n");
      await assertRejects(
        () =>
          predictPatches(patches, {
            weights,
            out,
            batchSize: 4,
            tta: "single",
            quiet: true,
            engine: e,
            targetGenes: genes,
          }),
        RangeError,
        "has 2 names, but the checkpoint's target head predicts 3 genes",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "predict-patches --h5ad: X, a boolean tumour call, and what X is, the model and the TTA mode",
  async (e) => {
    const patches = sharedData("he2gene/exps");
    if (!patches) return console.warn("skipped: needs ../shared/data/he2gene/exps");
    const dir = await Deno.makeTempDir({ prefix: "he2gene-h5ad-" });
    try {
      const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
      const out = join(dir, "out");
      const p = await predictPatches(patches, {
        weights,
        out,
        batchSize: 4,
        tta: "single",
        h5ad: true,
        quiet: true,
        engine: e,
      });
      const h = await readH5ad(join(out, "predictions.h5ad"));
      assertEquals([h.shape, h.obsNames, h.varNames], [[4, 3], p.names, p.targetGenes]);
      assertEquals(Array.from(h.X), Array.from(p.target));
      assertEquals(h.obs.tumor, Array.from(p.tumorProb, (v) => v > 0.5));
      assertEquals(Object.keys(h.obsm), []); // no slide, no spatial coordinates
      const { X_description, ...uns } = h.uns;
      assertEquals(String(X_description).includes("log1p(1e4 * count / total)"), true);
      assertEquals(uns.log1p, { base: Math.E });
      assertEquals([uns.head, uns.model, uns.tta, uns.patches], [
        "target",
        "tiny.safetensors",
        "single",
        "exps",
      ]);
      const aux = await readH5ad(join(out, "predictions_aux.h5ad"));
      assertEquals([aux.shape, aux.uns.head], [[4, 5], "aux"]);
      if (!(await hasModules(["anndata"]))) {
        return console.warn(`skipped: the anndata check needs ${PYTHON} with anndata (python3-anndata)`);
      }
      const py = await python([
        "-c",
        `import anndata\na = anndata.read_h5ad("${join(out, "predictions.h5ad")}")\n` +
        `print(a.shape, a.obs["tumor"].dtype, a.uns["model"], a.uns["tta"], "spatial" in a.uns)`,
      ]);
      assertEquals(py.out.trim(), "(4, 3) bool tiny.safetensors single False", py.out);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
