/**
 * `he2gene truth`: the truth npz of a dataset's spots without training — the file `train` writes for its
 * validation spots, array for array — with her2st's spots named as the predictions name them
 * (`C2_25_13`, not the counts' `25x13`), and the spot-name join that accepts both namings.
 */
import { join } from "node:path";
import { canonicalSpotNames, runTruth, spotName } from "../../cli/truth.ts";
import { runTrain } from "../../cli/train.ts";
import { UsageError } from "../../cli/errors.ts";
import { readNpy, readNpz } from "../../slide/npy.ts";
import { readText } from "../../slide/datasets/types.ts";
import { log1pNormalize } from "../../slide/genes.ts";
import { assertEquals, assertRejects, assertThrows, sharedData } from "../helpers.ts";
import { tinyHer2st } from "./tiny_her2st.ts";

const her2st = sharedData("her2st");

/** Every array of an npz as [key, dtype, shape, values] (NaN kept as the string "NaN"), keys sorted. */
async function arrays(path: string): Promise<unknown[]> {
  const z = await readNpz(path);
  return Object.keys(z).sort().map((k) => [
    k,
    z[k].dtype,
    z[k].shape,
    Array.from(z[k].data as ArrayLike<unknown>, (v) => (Number.isNaN(v) ? "NaN" : v)),
  ]);
}

Deno.test({
  name: "truth writes the npz train writes for the same spots and genes (val_truth.npz), array for array",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-truth-" });
    try {
      const { root, counts } = await tinyHer2st(join(dir, "her2st"));
      const genes = join(dir, "target.txt");
      await Deno.writeTextFile(genes, "G3\nG1\n");
      const run = join(dir, "run");
      await runTrain([
        ...["--dataset", "her2st", "--root", root, "--backbone", "tiny", "--epochs", "1"],
        ...["--crop-size", "24", "--image-size", "32", "--batch-size", "4", "--target-genes", genes],
        ...["--train-sections", "X1,X3", "--val-sections", "X2", "--out", run, "--quiet"],
      ]);
      const out = join(dir, "sub", "truth.npz"); // its folder is created
      await runTruth([
        ...["--dataset", "her2st", "--root", root, "--sections", "X2", "--target-genes", genes],
        ...["--out", out, "--quiet"],
      ]);
      assertEquals(await arrays(out), await arrays(join(run, "val_truth.npz")));
      const z = await readNpz(out);
      assertEquals(z.genes.data, ["G3", "G1", "G0", "G2", "G4"]);
      assertEquals(z.names.data, [...counts.keys()].filter((n) => n.startsWith("X2_")));
      // --genes: the listed genes only; no list: the top --n-target by mean count first, then the rest.
      await runTruth(["--dataset", "her2st", "--root", root, "--genes", genes, "--out", out, "--quiet"]);
      const only = await readNpz(out);
      assertEquals([only.genes.data, only.target.shape], [["G3", "G1"], [27, 2]]);
      await runTruth(["--dataset", "her2st", "--root", root, "--n-target", "1", "--out", out, "--quiet"]);
      const mean = (g: number) => [...counts.values()].reduce((s, c) => s + c[g], 0);
      const top = [0, 1, 2, 3, 4].sort((a, b) => mean(b) - mean(a) || a - b)[0];
      assertEquals((await readNpz(out)).genes.data[0], `G${top}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("truth checks its options and inputs before reading any data", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-truth-args-" });
  try {
    const base = ["--dataset", "her2st", "--root", dir];
    await assertRejects(() => runTruth(["--dataset", "her2st"]), UsageError, "--root are required");
    await assertRejects(
      () => runTruth(["--dataset", "merfish", "--root", dir]),
      UsageError,
      "--dataset must be her2st, hbcis or visium",
    );
    await assertRejects(
      () => runTruth([...base, "--genes", "a.txt", "--target-genes", "b.txt"]),
      UsageError,
      "give one of --n-target, --target-genes and --genes",
    );
    await assertRejects(() => runTruth([...base, "--n-target", "0"]), UsageError, "--n-target");
    const missing = join(dir, "nope");
    await assertRejects(
      () => runTruth(["--dataset", "her2st", "--root", missing]),
      Error,
      `Cannot read --root ${missing}: no such folder`,
    );
    await assertRejects(
      () => runTruth([...base, "--genes", join(dir, "hvg.npy")]),
      Error,
      `Cannot read --genes ${join(dir, "hvg.npy")}: no such file`,
    );
    const { root } = await tinyHer2st(join(dir, "her2st"));
    await assertRejects(
      () =>
        runTruth(["--dataset", "her2st", "--root", root, "--sections", "X9", "--out", join(dir, "t.npz")]),
      Error,
      "Section X9 is not in",
    );
    assertEquals(await Array.fromAsync(Deno.readDir(dir)).then((e) => e.map((x) => x.name)), ["her2st"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("spot names: {section}_{x}_{y}; her2st's {x}x{y} ids join them, but not across sections", () => {
  assertEquals(spotName("C2", [25, 13]), "C2_25_13");
  assertEquals(canonicalSpotNames(["25x13", "C2_3x4", "C2_1_1"], ["C2_25_13"]), [
    "C2_25_13",
    "C2_3_4",
    "C2_1_1",
  ]);
  // Both sides bare: left as they are (they join as they are).
  assertEquals(canonicalSpotNames(["25x13"], ["25x13"]), ["25x13"]);
  // Names that are no array positions (Visium barcodes, tiles named otherwise) are left alone.
  assertEquals(canonicalSpotNames(["AAACAAGTATCTCCCA-1"], ["V1_1_1"]), ["AAACAAGTATCTCCCA-1"]);
  assertThrows(
    () => canonicalSpotNames(["25x13"], ["C2_25_13", "C3_25_13"]),
    Error,
    `"25x13" names no section, and the other file holds spots of 2 sections (C2, C3)`,
  );
});

Deno.test({
  name: "truth on her2st C2: names as the predictions', values log1p(1e4·count/total) of the counts file",
  ignore: !her2st,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-truth-c2-" });
    try {
      const out = join(dir, "C2.npz");
      const hvg = join(her2st!, "her_hvg_cut_1000.npy");
      await runTruth(["--dataset", "her2st", "--root", her2st!, "--sections", "C2", "--out", out, "--quiet"]);
      const z = await readNpz(out);
      const names = z.names.data as string[], genes = z.genes.data as string[];
      assertEquals(names.every((n) => /^C2_\d+_\d+$/.test(n)), true, names.slice(0, 3).join(", "));
      // The counts file: header of genes, rows "{x}x{y}\tcounts…"; spot C2_{x}_{y} is row "{x}x{y}".
      const rows = (await readText(join(her2st!, "data/ST-cnts/C2.tsv.gz"))).trimEnd().split("\n");
      const head = rows[0].split("\t").slice(1);
      const row = rows[1].split("\t");
      const [x, y] = row[0].replaceAll('"', "").split("x");
      const s = names.indexOf(`C2_${x}_${y}`);
      assertEquals(s >= 0, true, `C2_${x}_${y} in ${out}`);
      const expr = log1pNormalize(Float32Array.from(row.slice(1), Number));
      const G = genes.length, values = z.target.data as Float32Array;
      for (const g of ["ERBB2", "FASN", head[0]]) {
        assertEquals(values[s * G + genes.indexOf(g)], expr[head.indexOf(g)], `${g} at C2_${x}_${y}`);
      }
      // --genes: the HVG list only, in its order.
      await runTruth([
        ...["--dataset", "her2st", "--root", her2st!, "--sections", "C2", "--genes", hvg],
        ...["--out", out, "--quiet"],
      ]);
      const listed = (await readNpy(hvg)).data as string[];
      const h = await readNpz(out);
      assertEquals(h.genes.data, listed.filter((g) => genes.includes(g)));
      assertEquals(h.names.data, names);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
