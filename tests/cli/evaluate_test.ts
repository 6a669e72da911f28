/**
 * `he2gene evaluate`: joins on spot and gene names, reads our NPZ and the CSV trio alike, writes
 * metrics.json atomically, and agrees with numpy / scipy / sklearn on the files it read.
 */
import { join } from "node:path";
import { evaluate, formatTable, parseCsv, runEvaluate } from "../../cli/evaluate.ts";
import { writeOutputs } from "../../cli/predict_patches.ts";
import { UsageError } from "../../cli/errors.ts";
import { encodeNpz } from "../../slide/npy.ts";
import { assertClose, assertEquals, assertRejects, rand, sharedData } from "../helpers.ts";

const PYTHON = "/usr/bin/python3";

// Predictions: 6 spots × (4 target + 3 aux genes). Truth: 5 of those spots (shuffled) + 1 unknown spot,
// genes: 3 target, 2 aux, 1 unknown, and t1 constant in the truth.
const P = 6, nT = 4, nA = 3;
const names = ["S_1_1", "S_1_2", "S_2_1", "S_2_2", "S_3_1", "S_3_2"];
const targetGenes = ["t0", "t1", "t2", "t3"], auxGenes = ["a0", "a1", "a2"];
const target = rand(P * nT, 11, 0, 4), aux = rand(P * nA, 12, 0, 2);
const tumorProb = Float32Array.from(rand(P, 13, 0, 1));
const truthNames = ["S_3_2", "S_1_1", "X_9_9", "S_2_2", "S_1_2", "S_3_1"]; // S_2_1 missing, X_9_9 extra
const truthGenes = ["a1", "t2", "t0", "zz", "t1", "a0"];
const truthValues = rand(truthNames.length * truthGenes.length, 14, 0, 5);
for (let s = 0; s < truthNames.length; s++) truthValues[s * truthGenes.length + 4] = 2; // t1 constant
const truthTumor = new Uint8Array([1, 0, 1, 1, 0, 0]);

async function fixture(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-evaluate-" });
  await writeOutputs(dir, { names, targetGenes, auxGenes, target, aux, tumorProb });
  await Deno.writeFile(
    join(dir, "truth.npz"),
    encodeNpz({
      target: { dtype: "f4", shape: [truthNames.length, truthGenes.length], data: truthValues },
      names: { dtype: "U", shape: [truthNames.length], data: truthNames },
      genes: { dtype: "U", shape: [truthGenes.length], data: truthGenes },
      tumor: { dtype: "b1", shape: [truthNames.length], data: truthTumor },
    }, { compress: true }),
  );
  await Deno.writeTextFile(join(dir, "genes.txt"), "t0\na0\nNOPE\n");
  return dir;
}

const REF = String.raw`
import sys, json, numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score
d = sys.argv[1]
p = np.load(d + "/predictions.npz"); t = np.load(d + "/truth.npz")
pn = list(p["names"]); tn = list(t["names"]); tg = list(t["genes"])
spots = [n for n in pn if n in tn]
pi = [pn.index(n) for n in spots]; ti = [tn.index(n) for n in spots]
out = {}
for head, gk in (("target", "target_genes"), ("aux", "aux_genes")):
    for j, g in enumerate(p[gk]):
        if g in tg:
            x = p[head][pi, j].astype(np.float64); y = t["target"][ti, tg.index(g)].astype(np.float64)
            out[g] = None if np.ptp(y) == 0 or np.ptp(x) == 0 else float(pearsonr(x, y)[0])
out["auc"] = float(roc_auc_score(t["tumor"][ti], p["tumor_prob"][pi]))
print(json.dumps(out))
`;

Deno.test("evaluate joins predictions.npz and a truth NPZ on names and matches scipy / sklearn", async () => {
  const dir = await fixture();
  const res = await evaluate({
    pred: dir,
    truth: join(dir, "truth.npz"),
    genes: join(dir, "genes.txt"),
    topK: 2,
  });
  assertEquals(res.spots, {
    predicted: 6,
    truth: 6,
    joined: 5,
    onlyPredicted: 1,
    onlyTruth: 1,
    examplesOnlyPredicted: ["S_2_1"],
    examplesOnlyTruth: ["X_9_9"],
  });
  assertEquals(res.genes, {
    predicted: 7,
    truth: 6,
    joined: 5,
    onlyPredicted: 2,
    onlyTruth: 1,
    examplesOnlyTruth: ["zz"],
  });
  assertEquals(res.perGene.gene, ["t0", "t1", "t2", "a0", "a1"]);
  assertEquals(res.perGene.head, ["target", "target", "target", "aux", "aux"]);
  assertEquals(Number.isNaN(res.perGene.r[1]), true, "t1 is constant in the truth");
  assertEquals([res.summary.target!.n, res.summary.target!.constant, res.summary.aux!.n, res.summary.all.n], [
    3,
    1,
    2,
    5,
  ]);
  assertEquals(res.summary.all.list!.missing, ["NOPE"]);
  assertEquals(res.summary.all.topK!.k, 2);
  assertEquals([res.tumor!.positives, res.tumor!.negatives, res.tumor!.source], [2, 3, "tumor_prob"]);

  // metrics.json: written atomically next to the predictions, NaN as null, no temporary file left.
  const json = JSON.parse(await Deno.readTextFile(join(dir, "metrics.json")));
  assertEquals(json.perGene.r[1], null);
  assertEquals(json.summary.all.n, 5);
  const leftovers = [...Deno.readDirSync(dir)].filter((e) => e.name.includes(".tmp"));
  assertEquals(leftovers, []);

  const probe = await new Deno.Command(PYTHON, { args: ["-c", "import numpy, scipy, sklearn"] }).output()
    .catch(() => null);
  if (!probe?.success) {
    console.warn("skipped the scipy comparison: /usr/bin/python3 with numpy, scipy and sklearn is absent");
  } else {
    const r = await new Deno.Command(PYTHON, { args: ["-c", REF, dir], stdout: "piped", stderr: "piped" })
      .output();
    if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
    const ref = JSON.parse(new TextDecoder().decode(r.stdout));
    assertClose(
      res.perGene.r,
      res.perGene.gene.map((g) => ref[g] ?? NaN),
      { rtol: 1e-12, atol: 1e-12 },
      "r vs scipy",
    );
    assertClose([res.tumor!.auc], [ref.auc], { rtol: 1e-12, atol: 1e-12 }, "AUC vs sklearn");
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("evaluate reads the CSV trio and a truth CSV to the same r as the NPZ files", async () => {
  const dir = await fixture();
  const viaNpz = await evaluate({
    pred: join(dir, "predictions.npz"),
    truth: join(dir, "truth.npz"),
    out: null,
  });
  // Truth as CSV (pandas format, one quoted gene name to exercise the parser) and a tumour CSV.
  const G = truthGenes.length;
  const csv = [",a1,t2,t0,zz,t1,a0"];
  truthNames.forEach((n, s) =>
    csv.push([n, ...Array.from(truthValues.subarray(s * G, (s + 1) * G), (v) => String(v))].join(","))
  );
  await Deno.writeTextFile(join(dir, "truth.csv"), csv.join("\r\n").replace(",zz,", ',"zz",') + "\r\n");
  await Deno.writeTextFile(
    join(dir, "truth_tumor.csv"),
    ",Annotation\n" + truthNames.map((n, i) => `${n},${truthTumor[i] ? "True" : "False"}`).join("\n") + "\n",
  );
  const viaCsv = await evaluate({
    pred: join(dir, "target_count_pred.csv"),
    truthCsv: join(dir, "truth.csv"),
    truthTumor: join(dir, "truth_tumor.csv"),
    out: null,
  });
  assertEquals(viaCsv.perGene.gene, viaNpz.perGene.gene);
  assertClose(viaCsv.perGene.r, viaNpz.perGene.r, { rtol: 1e-12, atol: 1e-12 }, "r via CSV");
  assertEquals(viaCsv.tumor!.source, "tumor_pred.csv labels");
  assertEquals([viaCsv.tumor!.positives, viaCsv.tumor!.negatives], [2, 3]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("evaluate names what does not join, wrong shapes and duplicate spots", async () => {
  const dir = await fixture();
  const bad = (arrays: Parameters<typeof encodeNpz>[0]) =>
    Deno.writeFile(join(dir, "bad.npz"), encodeNpz(arrays));
  const s = (data: string[]) => ({ dtype: "U" as const, shape: [data.length], data });
  await bad({
    target: { dtype: "f4", shape: [2, 1], data: new Float32Array(2) },
    names: s(["Q_1_1", "Q_1_2"]),
    genes: s(["t0"]),
  });
  await assertRejects(
    () => evaluate({ pred: dir, truth: join(dir, "bad.npz"), out: null }),
    Error,
    "No spot names in common",
  );
  await bad({
    target: { dtype: "f4", shape: [2, 1], data: new Float32Array(2) },
    names: s(["S_1_1", "S_1_2"]),
    genes: s(["q"]),
  });
  await assertRejects(
    () => evaluate({ pred: dir, truth: join(dir, "bad.npz"), out: null }),
    Error,
    "No gene names in common",
  );
  await bad({
    target: { dtype: "f4", shape: [3, 1], data: new Float32Array(3) },
    names: s(["S_1_1", "S_1_2"]),
    genes: s(["t0"]),
  });
  await assertRejects(
    () => evaluate({ pred: dir, truth: join(dir, "bad.npz"), out: null }),
    Error,
    `"target" must have shape [2, 1] (names × genes), current shape is [3,1]`,
  );
  await bad({
    counts: { dtype: "f4", shape: [2, 1], data: new Float32Array(2) },
    names: s(["S_1_1", "S_1_1"]),
    genes: s(["t0"]),
  });
  await assertRejects(
    () => evaluate({ pred: dir, truth: join(dir, "bad.npz"), out: null }),
    Error,
    `the name "S_1_1" appears twice`,
  );
  await assertRejects(
    () => evaluate({ pred: join(dir, "nothing"), truth: join(dir, "truth.npz") }),
    Error,
    "Cannot read the predictions",
  );
  await assertRejects(() => runEvaluate([dir]), UsageError, "exactly one of --truth");
  await assertRejects(
    () => runEvaluate([dir, "--truth", "a.npz", "--top-k", "0"]),
    UsageError,
    "--top-k must be a positive integer",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("parseCsv handles quotes, doubled quotes, CRLF and a missing final newline", () => {
  assertEquals(parseCsv('a,"b,c","d""e"\r\n1,,3'), [["a", "b,c", 'd"e'], ["1", "", "3"]]);
});

Deno.test("evaluate reads the original HE2Gene CSVs: base against itself (r = 1) and against spat", async () => {
  const base = sharedData("he2gene/output/base");
  const spat = sharedData("he2gene/output/spat");
  if (!base || !spat) return;
  const out = await Deno.makeTempDir({ prefix: "he2gene-evaluate-orig-" });
  // The original's outputs: base holds 5 spots, spat 1 (D2_5_24).
  const self = await evaluate({
    pred: base,
    truthCsv: join(base, "aux_count_pred.csv"),
    truthTumor: join(base, "tumor_pred.csv"),
    out,
  });
  assertEquals([self.spots.joined, self.genes.joined, self.summary.aux!.n], [5, 19699, 19699]);
  assertEquals(self.summary.target, undefined);
  assertClose([self.summary.aux!.mean, self.summary.aux!.median], [1, 1], { rtol: 0, atol: 1e-6 });
  assertEquals(self.summary.aux!.valid + self.summary.aux!.constant, 19699);
  assertEquals(self.tumor!.source, "tumor_pred.csv labels");
  await Deno.stat(join(out, "metrics.json"));
  const vsSpat = await evaluate({ pred: base, truthCsv: join(spat, "target_count_pred.csv"), out: null });
  assertEquals([vsSpat.spots.joined, vsSpat.spots.onlyPredicted, vsSpat.genes.joined], [1, 4, 250]);
  assertEquals(vsSpat.summary.all.constant, 250, "one spot: r undefined for every gene");
  await Deno.remove(out, { recursive: true });
});

Deno.test("evaluate gives the MSE over the --genes list and the mean-expression baseline's, and explains its columns", async () => {
  const dir = await fixture();
  try {
    const res = await evaluate({
      pred: dir,
      truth: join(dir, "truth.npz"),
      genes: join(dir, "genes.txt"),
      topK: 2,
    });
    // By hand, in float64: the joined spots, each scored gene's MSE and its variance over those spots (the
    // baseline predicts each gene's mean over them).
    const joined = names.filter((n) => truthNames.includes(n));
    const G = truthGenes.length;
    const col = (g: string) =>
      joined.map((n) => truthValues[truthNames.indexOf(n) * G + truthGenes.indexOf(g)]);
    const predicted = (g: string) =>
      joined.map((n) => {
        const s = names.indexOf(n), t = targetGenes.indexOf(g);
        return t >= 0 ? target[s * nT + t] : aux[s * nA + auxGenes.indexOf(g)];
      });
    const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    const mse = (g: string) => mean(col(g).map((t, i) => (predicted(g)[i] - t) ** 2));
    const variance = (g: string) => mean(col(g).map((t) => (t - mean(col(g))) ** 2));
    const scored = ["t0", "t1", "t2", "a0", "a1"], listed = ["t0", "a0"]; // genes.txt: t0, a0, NOPE
    const tol = { rtol: 1e-12, atol: 1e-12 };
    assertClose(res.perGene.baselineMse, scored.map(variance), tol, "baseline per gene");
    const all = res.summary.all;
    assertClose([all.mse, all.baselineMse], [mean(scored.map(mse)), mean(scored.map(variance))], tol, "all");
    assertClose(
      [all.list!.mse, all.list!.baselineMse],
      [mean(listed.map(mse)), mean(listed.map(variance))],
      tol,
      "over the list",
    );
    assertClose([res.summary.target!.list!.mse], [mse("t0")], tol, "target genes of the list");
    assertEquals(variance("t1"), 0, "t1 is constant in the truth: the baseline is exact there");
    const json = JSON.parse(await Deno.readTextFile(join(dir, "metrics.json")));
    assertEquals(Object.keys(json.summary.all.list).includes("baselineMse"), true);

    const table = formatTable(res, 2);
    for (const s of ["MSE", "baseline", "list base", "Columns:", "list r = mean r over the --genes list"]) {
      assertEquals(table.includes(s), true, `"${s}" in\n${table}`);
    }
    assertEquals(table.includes("list n = listed genes scored / listed"), true, table);
    // The all row of the MSE table: model, baseline, list, list baseline.
    const row = table.split("\n").filter((l) => l.startsWith("all"))[1].split(/\s+/).slice(1);
    assertEquals(
      row,
      [all.mse, all.baselineMse, all.list!.mse, all.list!.baselineMse].map((v) => v.toFixed(3)),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate joins her2st's {x}x{y} spot ids with {section}_{x}_{y} predictions, either way round", async () => {
  const dir = await fixture();
  try {
    const viaNpz = await evaluate({ pred: dir, truth: join(dir, "truth.npz"), out: null });
    // The truth as a CSV indexed by the counts' ids (25x13 style): X_9_9 is another section, left out.
    const G = truthGenes.length;
    const keep = truthNames.map((n, s) => [n, s] as const).filter(([n]) => n.startsWith("S_"));
    const csv = [`,${truthGenes.join(",")}`];
    for (const [n, s] of keep) {
      const [, x, y] = n.split("_");
      csv.push([`${x}x${y}`, ...Array.from(truthValues.subarray(s * G, (s + 1) * G), String)].join(","));
    }
    await Deno.writeTextFile(join(dir, "counts.csv"), csv.join("\n") + "\n");
    const bare = await evaluate({ pred: dir, truthCsv: join(dir, "counts.csv"), out: null });
    assertEquals(bare.spots.joined, 5);
    assertEquals(bare.perGene.gene, viaNpz.perGene.gene);
    assertClose(bare.perGene.r, viaNpz.perGene.r, { rtol: 0, atol: 0 }, "r with {x}x{y} truth names");
    // And the other way round: predictions named S_1x1 … against the truth's S_1_1 names.
    await Deno.writeTextFile(
      join(dir, "pred.csv"),
      [
        `,${targetGenes.join(",")}`,
        ...names.map((n, s) => {
          const [sec, x, y] = n.split("_");
          return [`${sec}_${x}x${y}`, ...Array.from(target.subarray(s * nT, (s + 1) * nT), String)].join(",");
        }),
      ].join("\n") + "\n",
    );
    const sectioned = await evaluate({
      pred: join(dir, "pred.csv"),
      truth: join(dir, "truth.npz"),
      out: null,
    });
    assertEquals(sectioned.spots.joined, 5);
    assertEquals(sectioned.spots.examplesOnlyPredicted, ["S_2_1"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate names a missing input with its option before reading anything", async () => {
  const dir = await fixture();
  try {
    await assertRejects(
      () => runEvaluate([dir, "--truth", join(dir, "nope.npz")]),
      Error,
      `Cannot read --truth ${join(dir, "nope.npz")}: no such file`,
    );
    await assertRejects(
      () => runEvaluate([dir, "--truth", join(dir, "truth.npz"), "--genes", join(dir, "hvg.npy")]),
      Error,
      `Cannot read --genes ${join(dir, "hvg.npy")}: no such file`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
