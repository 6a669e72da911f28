/**
 * The library's evaluation (`pipeline/`) on tables in memory gives the `metrics.json` that `he2gene
 * evaluate` writes for the same predictions and truth read from files.
 */
import { join } from "node:path";
import { evaluate } from "../../cli/evaluate.ts";
import { writeOutputs } from "../../cli/predict_patches.ts";
import { type EvaluationTable, scorePredictions, toJson } from "../../pipeline/mod.ts";
import { encodeNpz } from "../../slide/npy.ts";
import { assertEquals, assertThrows, rand } from "../helpers.ts";

// 6 predicted spots × (4 target + 3 aux genes); the truth: 5 of them in another order, one more spot, her2st's
// bare `{x}x{y}` ids for two of them, genes of both heads and one unknown.
const P = 6, nT = 4, nA = 3;
const names = ["S_1_1", "S_1_2", "S_2_1", "S_2_2", "S_3_1", "S_3_2"];
const targetGenes = ["t0", "t1", "t2", "t3"], auxGenes = ["a0", "a1", "a2"];
const target = rand(P * nT, 21, 0, 4), aux = rand(P * nA, 22, 0, 2);
const tumorProb = Float32Array.from(rand(P, 23, 0, 1));
const truthNames = ["3x2", "S_1_1", "S_9_9", "S_2_2", "1x2", "S_3_1"];
const truthGenes = ["a1", "t2", "t0", "zz", "t1", "a0"];
const truthValues = rand(truthNames.length * truthGenes.length, 24, 0, 5);
const truthTumor = new Float32Array([1, 0, 1, 1, 0, 0]);

Deno.test("pipeline scorePredictions on tables in memory gives evaluate's metrics.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-pipeline-eval-" });
  try {
    await writeOutputs(dir, { names, targetGenes, auxGenes, target, aux, tumorProb });
    const truthPath = join(dir, "truth.npz");
    await Deno.writeFile(
      truthPath,
      encodeNpz({
        target: { dtype: "f4", shape: [truthNames.length, truthGenes.length], data: truthValues },
        names: { dtype: "U", shape: [truthNames.length], data: truthNames },
        genes: { dtype: "U", shape: [truthGenes.length], data: truthGenes },
        tumor: { dtype: "f4", shape: [truthNames.length], data: truthTumor },
      }),
    );
    await Deno.writeTextFile(join(dir, "genes.txt"), "t0\na0\nNOPE\n");
    await evaluate({ pred: dir, truth: truthPath, genes: join(dir, "genes.txt"), topK: 2, quiet: true });

    const pred: EvaluationTable = {
      source: join(dir, "predictions.npz"),
      names,
      heads: [
        { name: "target", genes: targetGenes, values: target },
        { name: "aux", genes: auxGenes, values: aux },
      ],
      tumor: tumorProb,
      tumorSource: "tumor_prob",
    };
    const truth: EvaluationTable = {
      source: truthPath,
      names: truthNames,
      heads: [{ name: "target", genes: truthGenes, values: truthValues }],
      tumor: truthTumor,
      tumorSource: "tumor",
    };
    const res = scorePredictions(pred, truth, { genes: ["t0", "a0", "NOPE"], topK: 2 });
    assertEquals(res.spots.joined, 5);
    assertEquals(res.genes.joined, 5);
    assertEquals(toJson(res), await Deno.readTextFile(join(dir, "metrics.json")));

    // Nothing in common: an error naming both sides.
    assertThrows(
      () =>
        scorePredictions(pred, {
          ...truth,
          names: ["X_1_1"],
          heads: [{ ...truth.heads[0], values: truthValues.subarray(0, 6) }],
        }),
      Error,
      "No spot names in common",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
