/**
 * The library's patch prediction (`pipeline/`) on bytes gives what the CLI writes for the same patches:
 * equal arrays, and the same CSV text and NPZ bytes from its pure encoders.
 */
import { join } from "node:path";
import { predictPatches as predictPatchesCli } from "../../cli/predict_patches.ts";
import { loadModel } from "../../cli/checkpoint.ts";
import { patchCsvs, patchNpz, predictPatches } from "../../pipeline/mod.ts";
import { assertEquals, assertRejects, gpuTest, sharedData, tinyCheckpoint } from "../helpers.ts";

gpuTest("pipeline predictPatches on bytes equals the CLI's output files (tta, batches of 3)", async (e) => {
  const patches = sharedData("he2gene/exps");
  if (!patches) return console.warn("skipped: needs ../shared/data/he2gene/exps");
  const dir = await Deno.makeTempDir({ prefix: "he2gene-pipeline-" });
  try {
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const out = join(dir, "out");
    const cli = await predictPatchesCli(patches, {
      weights,
      out,
      batchSize: 3,
      tta: "tta",
      quiet: true,
      engine: e,
    });
    const files = [...Deno.readDirSync(patches)].map((d) => d.name).filter((f) => f.endsWith(".tif")).sort();
    const images = files.map((f) => ({ name: f.split(".")[0], bytes: Deno.readFileSync(join(patches, f)) }));
    const { model, targetGenes, auxGenes } = await loadModel(e, weights);
    try {
      const progress: [number, number][] = [];
      const p = await predictPatches(e, model, images, {
        tta: "tta",
        batchSize: 3,
        targetGenes,
        auxGenes,
        onProgress: (done, total) => progress.push([done, total]),
      });
      assertEquals(progress, [[3, 4], [4, 4]]);
      assertEquals([p.names, p.targetGenes, p.auxGenes], [cli.names, cli.targetGenes, cli.auxGenes]);
      assertEquals(Array.from(p.target), Array.from(cli.target));
      assertEquals(Array.from(p.aux), Array.from(cli.aux));
      assertEquals(Array.from(p.tumorProb), Array.from(cli.tumorProb));
      for (const [name, text] of Object.entries(patchCsvs(p))) {
        assertEquals(text, await Deno.readTextFile(join(out, name)), name);
      }
      assertEquals(patchNpz(p), await Deno.readFile(join(out, "predictions.npz")));

      const ac = new AbortController();
      ac.abort(new Error("stopped"));
      await assertRejects(
        () => predictPatches(e, model, images, { tta: "single", batchSize: 2, signal: ac.signal }),
        Error,
        "stopped",
      );
    } finally {
      model.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
