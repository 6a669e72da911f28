/**
 * `he2gene evaluate PRED --truth FILE.npz | --truth-csv FILE.csv`: score predictions against measured
 * expression.
 *
 * Predictions: our `predictions.npz` (`target`, `aux`, `tumor_prob`, `names`, `target_genes`,
 * `aux_genes`), or the CSVs of `predict-patches` / the original `patch_pred.py` (`target_count_pred.csv`,
 * plus `aux_count_pred.csv` and `tumor_pred.csv` beside it when present). PRED is the file or its folder.
 *
 * Truth: an NPZ with `target` (or `counts`) `(P, G)`, `names` `(P,)`, `genes` `(G,)` and optionally `tumor`
 * `(P,)`; or a CSV in the format of `target_count_pred.csv` (index = spot name, header = genes) plus an
 * optional tumour CSV (`--truth-tumor`, first column True/False or 0/1). Values are compared as given, in the
 * model's scale (HE2Gene predicts log expression); `--log1p` applies log(1 + x) to the truth first.
 *
 * Spots are joined on names — `{section}_{x}_{y}`, with her2st's `{x}x{y}` count ids read as such
 * (`canonicalSpotNames`, slide/spots.ts) — and genes on names (each predicted gene is taken from the target
 * head, else the aux head); what does not join is reported. Pearson r per gene is summarised for the target
 * genes, the aux genes and all of them: mean and median over genes with a defined r (constant columns give
 * NaN and are counted), the mean over the top-k genes by mean true expression, and the mean over a
 * `--genes` list (e.g. the 785 HER2+ HVGs). The MSE (mean over genes of each gene's mean squared error over
 * the spots) is given over those genes and over the list, beside the mean-expression baseline's: every spot
 * predicted as its gene's mean over the joined truth spots — the best a constant prediction can do, so its
 * MSE is the truth's variance; its Pearson r is undefined. The tumour ROC AUC uses `tumor_prob` (NPZ) or the
 * 0/1 labels (CSV). `metrics.json` is written atomically into `--out` (default: the predictions' folder).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname, join } from "node:path";
import { type NpyArray, readNpz, toNumbers } from "../slide/npy.ts";
import { makeDirs, removeCreatedDirs, writeAtomic } from "../slide/npz.ts";
import { exists } from "../slide/datasets/types.ts";
import { readGeneList } from "../slide/genes.ts";
import {
  type EvaluateResult,
  type EvaluationHead as Head,
  type EvaluationTable as SpotTable,
  EXAMPLES,
  type HeadMetrics,
  type MseSummary,
  scorePredictions,
  toJson,
} from "../pipeline/evaluate.ts";
import { checkInputs, checkInterrupt, UsageError } from "./errors.ts";

export { type EvaluateResult, type HeadMetrics, type MseSummary, scorePredictions, type SpotTable, toJson };

/** Options of {@linkcode evaluate}. */
export interface EvaluateOptions {
  /** predictions.npz, target_count_pred.csv, or their folder */
  pred: string;
  truth?: string;
  truthCsv?: string;
  truthTumor?: string;
  /** Gene list (.txt one per line, or .npy of strings) */
  genes?: string;
  topK?: number;
  log1p?: boolean;
  /** Folder of metrics.json (default: the predictions' folder); null: do not write */
  out?: string | null;
  quiet?: boolean;
}

// ---------------------------------------------------------------------------------------------------------
// Reading

function strings(a: NpyArray | undefined, file: string, key: string): string[] {
  if (!a) throw new Error(`${file}: no array "${key}"`);
  if (a.dtype !== "U") throw new Error(`${file}: "${key}" must be strings (<U), current dtype is ${a.dtype}`);
  if (a.shape.length !== 1) throw new Error(`${file}: "${key}" must be 1-D, current shape is [${a.shape}]`);
  return a.data;
}

function matrix(a: NpyArray, file: string, key: string, rows: number, cols: number): Float32Array {
  if (a.shape.length !== 2 || a.shape[0] !== rows || a.shape[1] !== cols) {
    throw new Error(
      `${file}: "${key}" must have shape [${rows}, ${cols}] (names × genes), current shape is [${a.shape}]`,
    );
  }
  if (a.dtype === "U") throw new Error(`${file}: "${key}" must be numeric, current dtype is <U`);
  return a.dtype === "f4" ? a.data : Float32Array.from(toNumbers(a, key));
}

function vector(a: NpyArray, file: string, key: string, n: number): Float32Array {
  if (a.shape.length !== 1 || a.shape[0] !== n) {
    throw new Error(`${file}: "${key}" must have shape [${n}], current shape is [${a.shape}]`);
  }
  if (a.dtype === "U") throw new Error(`${file}: "${key}" must be numeric or bool, current dtype is <U`);
  return Float32Array.from(toNumbers(a, key));
}

async function readPredictionsNpz(path: string): Promise<SpotTable> {
  const z = await readNpz(path);
  const names = strings(z.names, path, "names");
  const heads: Head[] = [];
  for (const [name, gk] of [["target", "target_genes"], ["aux", "aux_genes"]] as const) {
    if (!z[name]) continue;
    const genes = strings(z[gk], path, gk);
    heads.push({ name, genes, values: matrix(z[name], path, name, names.length, genes.length) });
  }
  if (heads.length === 0) throw new Error(`${path}: no "target" or "aux" array`);
  const t: SpotTable = { source: path, names, heads };
  if (z.tumor_prob) {
    t.tumor = vector(z.tumor_prob, path, "tumor_prob", names.length);
    t.tumorSource = "tumor_prob";
  }
  return t;
}

async function readTruthNpz(path: string): Promise<SpotTable> {
  const z = await readNpz(path);
  const key = z.target ? "target" : z.counts ? "counts" : null;
  if (!key) throw new Error(`${path}: no array "target" or "counts" (found ${Object.keys(z).join(", ")})`);
  const names = strings(z.names, path, "names");
  const genes = strings(z.genes, path, "genes");
  const t: SpotTable = {
    source: path,
    names,
    heads: [{ name: "target", genes, values: matrix(z[key], path, key, names.length, genes.length) }],
  };
  if (z.tumor) {
    t.tumor = vector(z.tumor, path, "tumor", names.length);
    t.tumorSource = "tumor";
  }
  return t;
}

/** Split CSV text into rows of fields (RFC 4180 quotes; `\r\n` or `\n`). */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [], field = "", i = 0, quoted = false;
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else field += c;
      i++;
      continue;
    }
    if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      if (c === "\r" && text[i + 1] === "\n") i++;
    } else field += c;
    i++;
  }
  if (field.length > 0 || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

function cell(s: string, file: string, line: number, col: number): number {
  if (s === "" || s === "nan" || s === "NaN") return NaN;
  if (s === "inf" || s === "-inf") return s[0] === "-" ? -Infinity : Infinity; // pandas' spelling
  if (s === "True" || s === "true") return 1;
  if (s === "False" || s === "false") return 0;
  const v = Number(s);
  if (Number.isNaN(v)) throw new Error(`${file}: line ${line}, column ${col + 1}: "${s}" is not a number`);
  return v;
}

/** Read a pandas CSV (index column, header row) into names × columns. */
export async function readCsvTable(
  path: string,
): Promise<{ names: string[]; columns: string[]; values: Float32Array }> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
  const rows = parseCsv(text).filter((r) => !(r.length === 1 && r[0] === ""));
  if (rows.length === 0) throw new Error(`${path}: empty CSV`);
  const columns = rows[0].slice(1);
  const names: string[] = [];
  const values = new Float32Array((rows.length - 1) * columns.length);
  for (let r = 1; r < rows.length; r++) {
    if (rows[r].length !== columns.length + 1) {
      throw new Error(
        `${path}: line ${r + 1} has ${rows[r].length} fields, the header has ${columns.length + 1}`,
      );
    }
    names.push(rows[r][0]);
    for (let c = 0; c < columns.length; c++) {
      values[(r - 1) * columns.length + c] = cell(rows[r][c + 1], path, r + 1, c + 1);
    }
  }
  return { names, columns, values };
}

async function tumorCsv(path: string, names: string[]): Promise<Float32Array> {
  const t = await readCsvTable(path);
  if (t.columns.length < 1) throw new Error(`${path}: no tumour column`);
  const at = new Map(t.names.map((n, i) => [n, i]));
  return Float32Array.from(names, (n) => {
    const i = at.get(n);
    return i === undefined ? NaN : t.values[i * t.columns.length];
  });
}

async function readPredictionsCsv(target: string): Promise<SpotTable> {
  const dir = dirname(target);
  const t = await readCsvTable(target);
  const heads: Head[] = [{ name: "target", genes: t.columns, values: t.values }];
  const auxPath = join(dir, "aux_count_pred.csv");
  if (basename(target) === "target_count_pred.csv" && await exists(auxPath)) {
    const a = await readCsvTable(auxPath);
    if (a.names.join("\n") !== t.names.join("\n")) {
      throw new Error(`${auxPath}: its spots differ from those of ${target}`);
    }
    heads.push({ name: "aux", genes: a.columns, values: a.values });
  }
  const table: SpotTable = { source: target, names: t.names, heads };
  const tumorPath = join(dir, "tumor_pred.csv");
  if (await exists(tumorPath)) {
    table.tumor = await tumorCsv(tumorPath, t.names);
    table.tumorSource = "tumor_pred.csv labels";
  }
  return table;
}

/** Read predictions from predictions.npz, a CSV, or the folder holding them. */
export async function readPredictions(path: string): Promise<SpotTable> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw new Error(`Cannot read the predictions ${path}: ${(e as Error).message}`);
  }
  if (info.isDirectory) {
    if (await exists(join(path, "predictions.npz"))) return readPredictionsNpz(join(path, "predictions.npz"));
    if (await exists(join(path, "target_count_pred.csv"))) {
      return readPredictionsCsv(join(path, "target_count_pred.csv"));
    }
    throw new Error(`${path}: no predictions.npz or target_count_pred.csv`);
  }
  return path.endsWith(".npz") ? readPredictionsNpz(path) : readPredictionsCsv(path);
}

// ---------------------------------------------------------------------------------------------------------
// Output

const f3 = (v: number | undefined) => v === undefined || Number.isNaN(v) ? "—" : v.toFixed(3);

/**
 * The readable tables printed by `evaluate` — Pearson r, then MSE, per head — with a legend of their columns
 * under them, and the tumour AUC.
 */
export function formatTable(res: EvaluateResult, topK: number): string {
  const sp = res.spots, ge = res.genes;
  const heads = (["target", "aux", "all"] as const).filter((k) => res.summary[k]);
  const row = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(12) : c.padStart(10))).join("");
  const hasList = res.summary.all.list !== undefined;
  const lines = [
    `spots: ${sp.joined} joined (${sp.predicted} predicted, ${sp.truth} in truth; ` +
    `${sp.onlyPredicted} only predicted, ${sp.onlyTruth} only in truth)`,
    `genes: ${ge.joined} joined (${ge.predicted} predicted, ${ge.truth} in truth; ` +
    `${ge.onlyTruth} in truth not predicted)`,
    "",
    row(["Pearson r", "genes", "valid", "mean r", "median r", `top-${topK} r`, "list r", "list n"]),
    ...heads.map((k) => {
      const s = res.summary[k]!;
      return row([
        k,
        String(s.n),
        String(s.valid),
        f3(s.mean),
        f3(s.median),
        f3(s.topK?.mean),
        f3(s.list?.mean),
        s.list ? `${s.list.n}/${s.list.listed}` : "—",
      ]);
    }),
    "",
    row(["MSE", "model", "baseline", "list", "list base"]),
    ...heads.map((k) => {
      const s = res.summary[k]!;
      return row([k, f3(s.mse), f3(s.baselineMse), f3(s.list?.mse), f3(s.list?.baselineMse)]);
    }),
  ];
  const nConst = res.summary.all.constant;
  if (nConst > 0) {
    lines.push(`(${nConst} genes have a constant predicted or true column: r undefined, left out)`);
  }
  lines.push(
    "",
    "Columns: genes = genes scored (in both files, by name), valid = those with a defined r (not constant);",
    "  mean r, median r = over the valid genes of each gene's Pearson r across the joined spots;",
    `  top-${topK} r = mean r over the ${topK} genes of highest mean measured expression;`,
    `  list r = mean r over the --genes list; list n = listed genes scored / listed${
      hasList ? "" : " (no --genes: —)"
    };`,
    "  MSE model = mean over genes of each gene's mean squared error across the spots;",
    "  baseline = the same for the mean-expression baseline (each gene predicted as its mean over these",
    "  spots: the best constant; its r is undefined); list, list base = both over the --genes list.",
  );
  if (res.tumor) {
    const t = res.tumor;
    lines.push(
      "",
      `tumour ROC AUC ${
        f3(t.auc)
      } (${t.positives} positive, ${t.negatives} negative spots; from ${t.source}); ` +
        `accuracy at 0.5: ${f3(t.accuracy)}`,
    );
  }
  return lines.join("\n");
}

/**
 * Read, join, score, write `metrics.json` and return the result.
 *
 * @example
 * ```ts ignore
 * const res = await evaluate({ pred: "output", truth: "truth.npz", genes: "her_hvg_cut_1000.npy" });
 * ```
 */
export async function evaluate(o: EvaluateOptions): Promise<EvaluateResult> {
  const pred = await readPredictions(o.pred);
  let truth: SpotTable;
  if (o.truth) truth = await readTruthNpz(o.truth);
  else if (o.truthCsv) {
    const t = await readCsvTable(o.truthCsv);
    truth = {
      source: o.truthCsv,
      names: t.names,
      heads: [{ name: "target", genes: t.columns, values: t.values }],
    };
  } else throw new UsageError("--truth FILE.npz or --truth-csv FILE.csv is required");
  if (o.truthTumor) {
    truth.tumor = await tumorCsv(o.truthTumor, truth.names);
    truth.tumorSource = o.truthTumor;
  }
  const genes = o.genes ? await readGeneList(o.genes, "--genes") : undefined;
  checkInterrupt();
  const res = scorePredictions(pred, truth, { genes, topK: o.topK, log1p: o.log1p });
  checkInterrupt();
  if (o.out !== null) {
    const dir = o.out ?? dirname(pred.source);
    // A folder made for metrics.json is removed again if the write fails.
    let created: string[] = [];
    try {
      created = await makeDirs(dir);
      await writeAtomic(join(dir, "metrics.json"), toJson(res));
    } catch (e) {
      await removeCreatedDirs(created);
      throw new Error(`Cannot write ${join(dir, "metrics.json")}: ${(e as Error).message}`);
    }
  }
  return res;
}

/** CLI entry: parse arguments and run. */
export async function runEvaluate(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      truth: { type: "string" },
      "truth-csv": { type: "string" },
      "truth-tumor": { type: "string" },
      genes: { type: "string" },
      "top-k": { type: "string", default: "50" },
      log1p: { type: "boolean", default: false },
      out: { type: "string" },
      quiet: { type: "boolean", default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) {
    throw new UsageError(
      "expected one predictions path (predictions.npz, target_count_pred.csv or their folder)",
    );
  }
  if (!values.truth === !values["truth-csv"]) {
    throw new UsageError("give exactly one of --truth FILE.npz and --truth-csv FILE.csv");
  }
  const topK = Number(values["top-k"]);
  if (!Number.isInteger(topK) || topK < 1) {
    throw new UsageError(`--top-k must be a positive integer, current value is ${values["top-k"]}`);
  }
  await checkInputs([
    ["the predictions", positionals[0], "file or folder"],
    ["--truth", values.truth, "file"],
    ["--truth-csv", values["truth-csv"], "file"],
    ["--truth-tumor", values["truth-tumor"], "file"],
    ["--genes", values.genes, "file"],
  ]);
  const res = await evaluate({
    pred: positionals[0],
    truth: values.truth,
    truthCsv: values["truth-csv"],
    truthTumor: values["truth-tumor"],
    genes: values.genes,
    topK,
    log1p: values.log1p,
    out: values.out,
    quiet: values.quiet,
  });
  const out = join(values.out ?? dirname(res.predictions), "metrics.json");
  if (!values.quiet) {
    console.log(formatTable(res, topK));
    if (res.spots.examplesOnlyPredicted.length) {
      console.log(`\nspots only predicted, e.g. ${res.spots.examplesOnlyPredicted.join(", ")}`);
    }
    if (res.spots.examplesOnlyTruth.length) {
      console.log(`spots only in truth, e.g. ${res.spots.examplesOnlyTruth.join(", ")}`);
    }
    if (res.genes.examplesOnlyTruth.length) {
      console.log(`genes in truth not predicted, e.g. ${res.genes.examplesOnlyTruth.join(", ")}`);
    }
    const list = res.summary.all.list;
    if (list && list.missing.length) {
      console.log(
        `--genes: ${list.missing.length} of ${list.listed} listed genes not joined, e.g. ${
          list.missing.slice(0, EXAMPLES).join(", ")
        }`,
      );
    }
  }
  console.log(`→ ${out}`);
}
