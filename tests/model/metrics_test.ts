/**
 * Metrics against scipy / sklearn (computed by /usr/bin/python3 at test time; numpy closed forms when
 * scipy or sklearn is missing, skipped without numpy), plus closed-form checks that need no Python.
 */
import { join } from "node:path";
import {
  columnMeans,
  meanExpressionBaseline,
  msePerGene,
  nanMedian,
  pearsonPerGene,
  rocAuc,
  summarize,
} from "../../model/metrics.ts";
import { assertClose, assertEquals, assertThrows, rand, sharedData } from "../helpers.ts";

const PYTHON = "/usr/bin/python3";

async function python(script: string, args: string[]): Promise<string | null> {
  try {
    const r = await new Deno.Command(PYTHON, {
      args: ["-c", script, ...args],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const dec = new TextDecoder();
    if (!r.success) {
      const err = dec.decode(r.stderr);
      if (/No module named 'numpy'/.test(err)) return null;
      throw new Error(`python failed:\n${err}`);
    }
    return dec.decode(r.stdout);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

const REF = String.raw`
import sys, json, numpy as np
d = sys.argv[1]
P, G = int(sys.argv[2]), int(sys.argv[3])
pred = np.fromfile(d + "/pred.bin", dtype="<f4").reshape(P, G).astype(np.float64)
truth = np.fromfile(d + "/truth.bin", dtype="<f4").reshape(P, G).astype(np.float64)
scores = np.fromfile(d + "/scores.bin", dtype="<f4").astype(np.float64)
labels = np.fromfile(d + "/labels.bin", dtype="u1").astype(bool)
out = {}
try:
    import warnings
    from scipy.stats import pearsonr
    warnings.simplefilter("ignore")
    r = []
    for g in range(G):
        if np.ptp(pred[:, g]) == 0 or np.ptp(truth[:, g]) == 0:
            r.append(None)
        else:
            r.append(float(pearsonr(pred[:, g], truth[:, g])[0]))
    out["r_src"] = "scipy"
except ImportError:
    r = []
    for g in range(G):
        c = np.corrcoef(pred[:, g], truth[:, g])[0, 1] if np.ptp(pred[:, g]) and np.ptp(truth[:, g]) else None
        r.append(None if c is None else float(c))
    out["r_src"] = "numpy"
out["r"] = r
ra = np.array([np.nan if x is None else x for x in r])
out["mean"] = float(np.nanmean(ra))
out["median"] = float(np.nanmedian(ra))
me = truth.mean(0)
top = np.argsort(-me, kind="stable")[:5]
out["top5"] = float(np.nanmean(ra[top]))
try:
    from sklearn.metrics import roc_auc_score
    out["auc"] = float(roc_auc_score(labels, scores))
    out["auc_src"] = "sklearn"
except ImportError:
    from numpy import argsort
    # average ranks by hand (scipy.stats.rankdata "average")
    order = np.argsort(scores, kind="stable"); s = scores[order]; ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]: j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1; i = j + 1
    npos = labels.sum(); nneg = len(labels) - npos
    out["auc"] = float((ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))
    out["auc_src"] = "numpy"
out["mse"] = float(((pred - truth) ** 2).mean())
print(json.dumps(out))
`;

Deno.test("pearsonPerGene, summarize and rocAuc match scipy / sklearn on random data with ties and constant genes", async () => {
  const P = 37, G = 13;
  const pred = rand(P * G, 3, 0, 5), truth = rand(P * G, 4, 0, 5);
  // Correlate a few genes, make gene 2's truth and gene 5's prediction constant, gene 7 huge mean.
  for (let s = 0; s < P; s++) {
    pred[s * G + 1] = truth[s * G + 1] * 2 + 0.1 * pred[s * G + 1];
    truth[s * G + 2] = 1.5;
    pred[s * G + 5] = 0.25;
    truth[s * G + 7] += 1e4;
    pred[s * G + 7] = truth[s * G + 7] - 1e4 + 0.5 * pred[s * G + 7];
  }
  // Scores with ties (rounded to 1 decimal), labels from a noisy threshold.
  const scores = rand(200, 5, 0, 1).map((v) => Math.round(v * 10) / 10);
  const noise = rand(200, 6, -0.3, 0.3);
  const labels = Array.from(scores, (v, i) => v + noise[i] > 0.5);
  const dir = await Deno.makeTempDir({ prefix: "he2gene-metrics-" });
  await Deno.writeFile(join(dir, "pred.bin"), new Uint8Array(pred.buffer));
  await Deno.writeFile(join(dir, "truth.bin"), new Uint8Array(truth.buffer));
  await Deno.writeFile(join(dir, "scores.bin"), new Uint8Array(scores.buffer));
  await Deno.writeFile(join(dir, "labels.bin"), Uint8Array.from(labels, Number));
  const out = await python(REF, [dir, String(P), String(G)]);
  await Deno.remove(dir, { recursive: true });
  if (out === null) {
    console.warn("skipped: /usr/bin/python3 with numpy is absent");
    return;
  }
  const ref = JSON.parse(out);
  console.log(`reference: r from ${ref.r_src}, AUC from ${ref.auc_src}`);
  const r = pearsonPerGene(pred, truth, P, G);
  assertClose(r, ref.r.map((x: number | null) => x ?? NaN), { rtol: 1e-12, atol: 1e-12 }, "r");
  assertEquals(Number.isNaN(r[2]) && Number.isNaN(r[5]), true);
  const names = Array.from({ length: G }, (_, i) => `g${i}`);
  const s = summarize(r, { geneNames: names, meanExpression: columnMeans(truth, P, G), topK: 5 });
  assertClose([s.mean, s.median, s.topK!.mean], [ref.mean, ref.median, ref.top5], {
    rtol: 1e-12,
    atol: 1e-12,
  });
  assertEquals([s.n, s.valid, s.constant], [G, G - 2, 2]);
  assertEquals(s.topK!.genes[0], "g7");
  assertClose([rocAuc(scores, labels)], [ref.auc], { rtol: 1e-12, atol: 1e-12 }, "AUC");
  const mse = msePerGene(pred, truth, P, G);
  assertClose([mse.reduce((a, b) => a + b) / G], [ref.mse], { rtol: 1e-10, atol: 0 }, "MSE");
});

Deno.test("pearsonPerGene is exact on closed forms: ±1 for affine columns, NaN for constant or one spot", () => {
  // (3 spots, 3 genes): gene 0 truth = 2·pred + 1 → 1; gene 1 reversed → −1; gene 2 constant truth → NaN.
  const pred = new Float32Array([1, 1, 4, 2, 2, 5, 3, 3, 6]);
  const truth = new Float32Array([3, 3, 7, 5, 2, 7, 7, 1, 7]);
  const r = pearsonPerGene(pred, truth, 3, 3);
  assertEquals([r[0], r[1], Number.isNaN(r[2])], [1, -1, true]);
  assertEquals(
    Number.isNaN(pearsonPerGene(new Float32Array([1, 2]), new Float32Array([3, 4]), 1, 2)[0]),
    true,
  );
  // Independent 2 × 2 design: r = 0.
  const x = new Float32Array([0, 0, 1, 1]), y = new Float32Array([0, 1, 0, 1]);
  assertEquals(pearsonPerGene(x, y, 4, 1)[0], 0);
});

Deno.test("pearsonPerGene keeps precision for a large mean and small variance (two-pass float64)", () => {
  const P = 1000;
  const pred = new Float32Array(P), truth = new Float32Array(P);
  for (let i = 0; i < P; i++) {
    pred[i] = 4096 + (i % 7) / 8; // exactly representable in float32
    truth[i] = 4096 + (i % 7) / 8;
  }
  assertEquals(pearsonPerGene(pred, truth, P, 1)[0], 1);
});

Deno.test("pearsonPerGene names the shape mismatch", () => {
  assertThrows(
    () => pearsonPerGene(new Float32Array(6), new Float32Array(5), 2, 3),
    RangeError,
    "Cannot compute Pearson r (truth): shape (2, 3) needs 6 values, current value has 5",
  );
});

Deno.test("rocAuc: closed forms, all ties = 0.5, one class absent = NaN", () => {
  assertEquals(rocAuc([0.1, 0.4, 0.35, 0.8], [false, false, true, true]), 0.75);
  assertEquals(rocAuc([1, 2, 3], [0, 1, 1]), 1);
  assertEquals(rocAuc([3, 2, 1], [0, 1, 1]), 0);
  assertEquals(rocAuc([0.5, 0.5, 0.5, 0.5], [true, false, true, false]), 0.5);
  // One positive tied with one of two negatives: (0.5 + 1) / 2.
  assertEquals(rocAuc([0.2, 0.5, 0.5], [false, false, true]), 0.75);
  assertEquals(Number.isNaN(rocAuc([0.1, 0.2], [true, true])), true);
  assertEquals(Number.isNaN(rocAuc([], [])), true);
  assertThrows(() => rocAuc([0.1, NaN], [true, false]), RangeError, "score 1 is NaN");
  assertThrows(() => rocAuc([0.1], [true, false]), RangeError, "1 scores, but 2 labels");
});

Deno.test("summarize: median of even count, top-k ties in gene order, gene list with missing genes", () => {
  const r = new Float64Array([0.1, NaN, 0.3, 0.5, 0.9]);
  const names = ["A", "B", "C", "D", "E"];
  const s = summarize(r, {
    geneNames: names,
    meanExpression: [5, 9, 5, 1, 0],
    topK: 3,
    genes: ["E", "C", "Z", "E"],
  });
  assertClose([s.mean, s.median], [0.45, 0.4], { rtol: 1e-15, atol: 1e-15 });
  assertEquals(s.topK!.genes, ["B", "A", "C"]);
  assertEquals([s.topK!.n, s.topK!.valid, s.topK!.constant], [3, 2, 1]);
  assertClose([s.topK!.mean], [0.2], { rtol: 1e-15, atol: 1e-15 });
  assertEquals([s.list!.listed, s.list!.n, s.list!.missing], [3, 2, ["Z"]]);
  assertClose([s.list!.mean], [0.6], { rtol: 1e-15, atol: 1e-15 });
  assertEquals(Number.isNaN(nanMedian([NaN])), true);
  assertThrows(() => summarize(r, { geneNames: ["A"] }), RangeError, "5 values of r, but geneNames has 1");
});

Deno.test("mean-expression baseline: training means, constant predictions (r = NaN), MSE against the truth", () => {
  // train (2 spots, 2 genes); test (2 spots).
  const b = meanExpressionBaseline(new Float32Array([1, 10, 3, 20]), 2, 2);
  assertEquals(Array.from(b.mean), [2, 15]);
  assertEquals(Array.from(b.predict(2)), [2, 15, 2, 15]);
  const sc = b.score(new Float32Array([0, 15, 4, 17]), 2);
  assertEquals(Array.from(sc.msePerGene), [4, 2]);
  assertEquals(sc.mse, 3);
  assertEquals(Array.from(sc.r).every(Number.isNaN), true);
  // Pearson of the baseline's prediction is NaN for every gene (constant column), as documented.
  const r = pearsonPerGene(b.predict(2), new Float32Array([0, 15, 4, 17]), 2, 2);
  assertEquals(Array.from(r).every(Number.isNaN), true);
});

Deno.test("summarize over the 785 HER2+ HVGs of her_hvg_cut_1000.npy counts the listed genes", async () => {
  const path = sharedData("her2st/her_hvg_cut_1000.npy");
  if (!path) return;
  const out = await python(
    `import sys, numpy as np; print("\\n".join(np.load(sys.argv[1]).tolist()))`,
    [path],
  );
  if (out === null) {
    console.warn("skipped: /usr/bin/python3 with numpy is absent");
    return;
  }
  const hvg = out.trim().split("\n");
  assertEquals(hvg.length, 785);
  const names = [...hvg.slice(0, 700), "NOT_A_GENE"];
  const r = new Float64Array(names.length).fill(0.25);
  const s = summarize(r, { geneNames: names, genes: hvg });
  assertEquals([s.list!.listed, s.list!.n, s.list!.missing.length, s.list!.mean], [785, 700, 85, 0.25]);
});
