/**
 * `he2gene truth --dataset her2st|visium|hbcis --root DIR [--sections A,B] --out truth.npz`: the measured
 * expression of a dataset's spots as the truth file that `evaluate` and `visualize --truth` read, without
 * training. It is the file `train` writes for its validation and held-out spots (`val_truth.npz`,
 * `test_truth.npz`), made by the same code ({@linkcode spotTruth}, {@linkcode truthNpz}):
 *
 * - `target` `(P, G)` float32: `log1p(1e4 · count / spot total)` over all the dataset's genes (the scale the
 *   model predicts in); `genes` `(G,)`: the target genes first (the top `--n-target` by mean count over these
 *   spots, or `--target-genes FILE`), then the others, as `train` orders them; `--genes FILE` keeps only the
 *   listed genes. The dataset's genes are those of all its sections, as `train` reads them.
 * - `names` `(P,)`: `{section}_{x}_{y}` ({@linkcode spotName}).
 * - `tumor` `(P,)` float32: 1 tumour, 0 not, NaN where the dataset has no label.
 *
 * Spot names. Predictions and truth name a spot `{section}_{x}_{y}` with its array column and row: the
 * names `predict-patches` reads from patch files (`C2_25_13.tif`), `extract-patches` and `predict-slide`
 * write, and `train` and this command use. her2st's count files call that spot `25x13`;
 * {@linkcode canonicalSpotNames} reads such ids (and `C2_25x13`) on input, so `evaluate` and
 * `visualize --truth` join either naming with the other.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname } from "node:path";
import {
  readHbcis,
  readHer2st,
  readVisium,
  type Section,
  type SpatialDataset,
} from "../slide/datasets/mod.ts";
import { type GeneSelection, log1pNormalize, readGeneList, selectTargetGenes } from "../slide/genes.ts";
import { encodeNpz, makeDirs, removeCreatedDirs, writeAtomic } from "../slide/npz.ts";
import { checkInputs, checkInterrupt, UsageError } from "./errors.ts";
import type { SpotTable } from "./train_loop.ts";
import { canonicalSpotNames } from "../slide/spots.ts";

export { canonicalSpotNames };

/** The datasets `train` and `truth` read (`--dataset`). */
export const DATASETS = ["her2st", "hbcis", "visium"] as const;

/** Read a dataset by its kind (`--dataset`), every section. */
export async function loadDataset(kind: string, root: string): Promise<SpatialDataset> {
  if (kind === "her2st") return await readHer2st(root);
  if (kind === "hbcis") return await readHbcis(root);
  if (kind === "visium") return await readVisium(root);
  throw new UsageError(`--dataset must be her2st, hbcis or visium, current value is ${kind}`);
}

/** A comma-separated section list (absent: none). */
export function sectionList(v: string | undefined): string[] {
  return v?.split(",").map((s) => s.trim()) ?? [];
}

/**
 * A spot's name in predictions and truth files: `{section}_{x}_{y}` with its array position
 * (her2st's spot `25x13` of section C2 is `C2_25_13`).
 *
 * @example
 * ```ts
 * spotName("C2", [25, 13]); // "C2_25_13"
 * ```
 */
export function spotName(section: string, array: readonly [number, number]): string {
  return `${section}_${array[0]}_${array[1]}`;
}

/** The truth of some spots: a {@linkcode SpotTable} without the patches. */
export type SpotTruth = Omit<SpotTable, "patches">;

/**
 * The truth of `rows` (spots of a dataset's sections): log1p-normalised expression of the selected target
 * and auxiliary genes, names ({@linkcode spotName}), grid positions and tumour labels (1 / 0, −1 unknown).
 * `aux: false` leaves the auxiliary genes out.
 */
export function spotTruth(
  rows: readonly { sec: Section; i: number }[],
  sel: GeneSelection,
  o: { aux?: boolean } = {},
): SpotTruth {
  const auxIndex = o.aux === false ? [] : sel.auxiliaryIndex;
  const nT = sel.targetIndex.length, nA = auxIndex.length;
  const target = new Float32Array(rows.length * nT), aux = new Float32Array(rows.length * nA);
  rows.forEach((r, k) => {
    const e = log1pNormalize(r.sec.spots[r.i].counts!);
    sel.targetIndex.forEach((g, j) => (target[k * nT + j] = e[g]));
    auxIndex.forEach((g, j) => (aux[k * nA + j] = e[g]));
  });
  return {
    names: rows.map((r) => spotName(r.sec.id, r.sec.spots[r.i].array)),
    sections: rows.map((r) => r.sec.id),
    grid: rows.map((r) => r.sec.spots[r.i].array),
    targetGenes: sel.target,
    auxGenes: o.aux === false ? [] : sel.auxiliary,
    target,
    aux,
    tumor: Int8Array.from(rows, (r) => {
      const t = r.sec.spots[r.i].tumor;
      return t === undefined ? -1 : t ? 1 : 0;
    }),
  };
}

/** The truth npz `evaluate` reads: target then aux genes, tumour 1 / 0 / NaN (unknown). */
export function truthNpz(t: SpotTruth, npz: { compress?: boolean } = {}): Uint8Array {
  const V = t.names.length, nT = t.targetGenes.length, nA = t.auxGenes.length, G = nT + nA;
  const truth = new Float32Array(V * G);
  for (let s = 0; s < V; s++) {
    truth.set(t.target.subarray(s * nT, (s + 1) * nT), s * G);
    truth.set(t.aux.subarray(s * nA, (s + 1) * nA), s * G + nT);
  }
  return encodeNpz({
    target: { dtype: "f4", shape: [V, G], data: truth },
    names: { dtype: "U", shape: [V], data: t.names },
    genes: { dtype: "U", shape: [G], data: [...t.targetGenes, ...t.auxGenes] },
    tumor: { dtype: "f4", shape: [V], data: Float32Array.from(t.tumor, (v) => (v < 0 ? NaN : v)) },
  }, { compress: npz.compress });
}

/** Usage of `truth` (for cli/main.ts). */
export const TRUTH_USAGE =
  "truth --dataset her2st|hbcis|visium --root DIR [--sections A,B] [--n-target 250 | --target-genes FILE |\n" +
  "       --genes FILE] [--out truth.npz] [--quiet]\n\n" +
  "  --dataset       her2st | hbcis | visium, read as train reads it\n" +
  "  --root          the dataset's folder\n" +
  "  --sections      sections to write (default: all)\n" +
  "  --n-target      target genes first: the top N by mean count over these spots (default 250), the rest\n" +
  "                  after them, as train orders them\n" +
  "  --target-genes  the target genes from a list instead (.txt one per line or .npy of strings)\n" +
  "  --genes         only the listed genes (e.g. her_hvg_cut_1000.npy)\n" +
  "  --out           the npz (default ./truth.npz): target [P, G] log1p(1e4·count/total), names [P]\n" +
  "                  {section}_{x}_{y}, genes [G], tumor [P] (1, 0, NaN unlabelled)";

/** CLI entry: parse arguments and run. */
export async function runTruth(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: {
      dataset: { type: "string" },
      root: { type: "string" },
      sections: { type: "string" },
      "n-target": { type: "string" },
      "target-genes": { type: "string" },
      genes: { type: "string" },
      out: { type: "string", default: "./truth.npz" },
      quiet: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (!v.dataset || !v.root) throw new UsageError("--dataset and --root are required");
  if (!(DATASETS as readonly string[]).includes(v.dataset)) {
    throw new UsageError(`--dataset must be her2st, hbcis or visium, current value is ${v.dataset}`);
  }
  const given = (["n-target", "target-genes", "genes"] as const).filter((k) => v[k] !== undefined);
  if (given.length > 1) {
    throw new UsageError(
      `give one of --n-target, --target-genes and --genes, not ${given.map((k) => `--${k}`).join(" and ")}`,
    );
  }
  const nTarget = v["n-target"] === undefined ? 250 : Number(v["n-target"]);
  if (!Number.isInteger(nTarget) || nTarget < 1) {
    throw new UsageError(`--n-target must be a positive integer, current value is ${v["n-target"]}`);
  }
  if (!v.out?.trim()) throw new UsageError("--out must name a file, current value is empty");
  const wanted = sectionList(v.sections);
  if (v.sections !== undefined && wanted.some((s) => s === "")) {
    throw new UsageError(`--sections must list section names, current value is "${v.sections}"`);
  }
  await checkInputs([
    ["--root", v.root, "folder"],
    ["--target-genes", v["target-genes"], "file"],
    ["--genes", v.genes, "file"],
  ]);
  const listFile = v["target-genes"] ?? v.genes;
  const list = listFile ? await readGeneList(listFile, v.genes ? "--genes" : "--target-genes") : undefined;
  const say = (s: string) => v.quiet || console.error(s);

  const ds = await loadDataset(v.dataset, v.root);
  for (const w of ds.warnings ?? []) say(`warning: ${w.message}`);
  checkInterrupt();
  const ids = ds.sections.map((s) => s.id);
  for (const s of wanted) {
    if (!ids.includes(s)) throw new Error(`Section ${s} is not in ${v.root} (sections: ${ids.join(", ")})`);
  }
  const sections = wanted.length ? ds.sections.filter((s) => wanted.includes(s.id)) : ds.sections;
  const rows = sections.flatMap((sec) => sec.spots.map((_, i) => ({ sec, i })));
  if (rows.length === 0) throw new Error(`Cannot write the truth: no spots in ${sections.map((s) => s.id)}`);
  const sel = selectTargetGenes(rows.map((r) => r.sec.spots[r.i]), ds.genes, { n: nTarget, list });
  if (list && sel.target.length === 0) {
    throw new Error(
      `Cannot write the truth: none of the ${list.length} genes of ${listFile} is in the dataset ` +
        `(${list.slice(0, 5).join(", ")}${list.length > 5 ? ", …" : ""}; the dataset's genes are e.g. ${
          ds.genes.slice(0, 5).join(", ")
        })`,
    );
  }
  if (sel.missing.length) {
    say(
      `warning: ${sel.missing.length} listed genes are absent from the data: ${
        sel.missing.slice(0, 5).join(", ")
      }${sel.missing.length > 5 ? ", …" : ""}`,
    );
  }
  const t = spotTruth(rows, sel, { aux: !v.genes });
  const bytes = truthNpz(t);
  checkInterrupt();
  let created: string[] = [];
  try {
    created = await makeDirs(dirname(v.out));
    await writeAtomic(v.out, bytes);
  } catch (e) {
    await removeCreatedDirs(created);
    throw new Error(`Cannot write ${v.out}: ${(e as Error).message}`);
  }
  const labelled = [...t.tumor].filter((x) => x >= 0).length;
  console.log(
    `${t.names.length} spots of ${sections.map((s) => s.id).join(", ")} × ` +
      `${t.targetGenes.length + t.auxGenes.length} genes (${labelled} with a tumour label) → ${v.out}`,
  );
}
