/**
 * Evaluation as a library: predictions and truth in memory (spot names, one block of values per head,
 * tumour scores) in, the metrics of `he2gene evaluate` out ({@linkcode scorePredictions}), and the
 * `metrics.json` text ({@linkcode toJson}). Reading the files is the caller's (cli/evaluate.ts).
 *
 * Spots are joined on names — `{section}_{x}_{y}`, with her2st's `{x}x{y}` count ids read as such
 * (`canonicalSpotNames`, slide/spots.ts) — and genes on names (each predicted gene is taken from the first
 * head that predicts it: the target head, else the aux head); what does not join is reported. Pearson r
 * per gene is summarised for the target genes, the aux genes and all of them: mean and median over genes
 * with a defined r (constant columns give NaN and are counted), the mean over the top-k genes by mean true
 * expression, and the mean over a gene list. The MSE (mean over genes of each gene's mean squared error
 * over the spots) is given over those genes and over the list, beside the mean-expression baseline's:
 * every spot predicted as its gene's mean over the joined truth spots (its MSE is the truth's variance).
 * The tumour ROC AUC uses the predicted probability against the labels.
 *
 * @module
 */
import {
  columnMeans,
  msePerGene,
  nanMean,
  type NonFiniteCells,
  nonFiniteCells,
  pearsonPerGene,
  type PearsonSummary,
  rocAuc,
  summarize,
} from "../model/metrics.ts";
import { canonicalSpotNames } from "../slide/spots.ts";

/** A block of predicted genes (one head). */
export interface EvaluationHead {
  name: "target" | "aux";
  genes: string[];
  /** (spots, genes) */
  values: Float32Array;
}

/** Predictions or truth in memory, as `he2gene evaluate` reads them from its files. */
export interface EvaluationTable {
  source: string;
  names: string[];
  heads: EvaluationHead[];
  /** Tumour score per spot (probability, or 0 / 1 labels) */
  tumor?: Float32Array;
  tumorSource?: string;
}

/** MSE of the predictions and of the mean-expression baseline (see the module doc). */
export interface MseSummary {
  mse: number;
  baselineMse: number;
}

/** A summary with its MSEs (over its genes and over the `--genes` list), as written in metrics.json. */
export type HeadMetrics = Omit<PearsonSummary, "list"> & MseSummary & {
  list?: NonNullable<PearsonSummary["list"]> & MseSummary;
};

/** What `evaluate` computes (metrics.json; NaN is written as null). */
export interface EvaluateResult {
  predictions: string;
  truth: string;
  spots: {
    predicted: number;
    truth: number;
    joined: number;
    onlyPredicted: number;
    onlyTruth: number;
    examplesOnlyPredicted: string[];
    examplesOnlyTruth: string[];
  };
  genes: {
    predicted: number;
    truth: number;
    joined: number;
    onlyPredicted: number;
    onlyTruth: number;
    examplesOnlyTruth: string[];
  };
  summary: { target?: HeadMetrics; aux?: HeadMetrics; all: HeadMetrics };
  tumor: { auc: number; positives: number; negatives: number; accuracy: number; source: string } | null;
  perGene: {
    gene: string[];
    head: string[];
    r: number[];
    mse: number[];
    /** The mean-expression baseline's MSE: the gene's variance over the joined truth spots. */
    baselineMse: number[];
    meanExpression: number[];
  };
}

function uniqueIndex(names: string[], what: string): Map<string, number> {
  const m = new Map<string, number>();
  names.forEach((n, i) => {
    if (m.has(n)) {
      throw new Error(`${what}: the name "${n}" appears twice (rows ${m.get(n)! + 1} and ${i + 1})`);
    }
    m.set(n, i);
  });
  return m;
}
// ---------------------------------------------------------------------------------------------------------
// Scoring

/** How many example names a result lists (spots, genes). */
export const EXAMPLES = 5;

/**
 * Join `pred` and `truth` on spot and gene names and compute the metrics (see the module doc).
 *
 * @example
 * ```ts ignore
 * const res = scorePredictions(await readPredictions("output"), truth, { genes: hvg, topK: 50 });
 * console.log(res.summary.all.mean, res.tumor?.auc);
 * ```
 */
export function scorePredictions(
  pred: EvaluationTable,
  truth: EvaluationTable,
  o: { genes?: string[]; topK?: number; log1p?: boolean } = {},
): EvaluateResult {
  // One naming on both sides ({section}_{x}_{y}; her2st's {x}x{y} ids are read as such).
  [pred, truth] = [
    { ...pred, names: canonicalSpotNames(pred.names, truth.names) },
    { ...truth, names: canonicalSpotNames(truth.names, pred.names) },
  ];
  const truthSpot = uniqueIndex(truth.names, `${truth.source} (spots)`);
  const predSpot = uniqueIndex(pred.names, `${pred.source} (spots)`);
  const spots = pred.names.filter((n) => truthSpot.has(n));
  const onlyPred = pred.names.filter((n) => !truthSpot.has(n));
  const onlyTruth = truth.names.filter((n) => !predSpot.has(n));
  if (spots.length === 0) {
    throw new Error(
      `No spot names in common: ${pred.source} has ${pred.names.slice(0, 3).join(", ")}…, ` +
        `${truth.source} has ${truth.names.slice(0, 3).join(", ")}…`,
    );
  }
  const T = truth.heads[0];
  const truthGene = uniqueIndex(T.genes, `${truth.source} (genes)`);
  const G0 = T.genes.length;
  // Each truth gene from the first head that predicts it.
  const taken = new Set<string>();
  const blocks: { head: EvaluationHead; genes: string[]; predCol: number[]; truthCol: number[] }[] = [];
  for (const head of pred.heads) {
    const b = { head, genes: [] as string[], predCol: [] as number[], truthCol: [] as number[] };
    head.genes.forEach((g, j) => {
      if (taken.has(g) || !truthGene.has(g)) return;
      taken.add(g);
      b.genes.push(g);
      b.predCol.push(j);
      b.truthCol.push(truthGene.get(g)!);
    });
    blocks.push(b);
  }
  const predictedGenes = new Set(pred.heads.flatMap((h) => h.genes));
  const onlyTruthGenes = T.genes.filter((g) => !predictedGenes.has(g));
  if (taken.size === 0) {
    throw new Error(
      `No gene names in common: ${pred.source} predicts ${pred.heads[0].genes.slice(0, 3).join(", ")}…, ` +
        `${truth.source} has ${T.genes.slice(0, 3).join(", ")}…`,
    );
  }

  const S = spots.length;
  const perGene: EvaluateResult["perGene"] = {
    gene: [],
    head: [],
    r: [],
    mse: [],
    baselineMse: [],
    meanExpression: [],
  };
  const summary: Partial<EvaluateResult["summary"]> = {};
  const all = {
    r: [] as number[],
    names: [] as string[],
    me: [] as number[],
    mse: [] as number[],
    base: [] as number[],
  };
  // The joined matrices first: NaN / Inf in them is reported as such, never scored as "constant".
  const joined: { b: (typeof blocks)[number]; p: Float32Array; t: Float32Array }[] = [];
  const log1pBad = { count: 0, first: null as null | { spot: string; gene: string; value: number } };
  for (const b of blocks) {
    const Gb = b.genes.length;
    if (Gb === 0) continue;
    const Gh = b.head.genes.length;
    const p = new Float32Array(S * Gb), t = new Float32Array(S * Gb);
    spots.forEach((name, s) => {
      const ps = predSpot.get(name)! * Gh, ts = truthSpot.get(name)! * G0;
      for (let g = 0; g < Gb; g++) {
        p[s * Gb + g] = b.head.values[ps + b.predCol[g]];
        const v = T.values[ts + b.truthCol[g]];
        const x = o.log1p ? Math.log1p(v) : v;
        if (o.log1p && Number.isFinite(v) && !Number.isFinite(x) && log1pBad.count++ === 0) {
          log1pBad.first = { spot: name, gene: b.genes[g], value: v };
        }
        t[s * Gb + g] = x;
      }
    });
    joined.push({ b, p, t });
  }
  for (const [which, table] of [["t", truth], ["p", pred]] as const) {
    const report = nonFiniteReport(
      joined.map(({ b, p, t }) => ({
        genes: b.genes,
        cells: nonFiniteCells(which === "t" ? t : p, S, b.genes.length),
      })),
      spots,
      table.source.toLowerCase().endsWith(".csv"),
    );
    if (!report) continue;
    const what = which === "p"
      ? `the predictions ${table.source}`
      : `the truth ${table.source}${log1pBad.count > 0 ? " after --log1p" : ""}`;
    let cause = "";
    if (which === "t" && log1pBad.count > 0) {
      const f = log1pBad.first!;
      cause = `. ${log1pBad.count} of them come from --log1p: log(1 + x) is undefined for x ≤ −1 ` +
        `(e.g. spot ${f.spot}, gene ${f.gene}: ${f.value}); is the truth already on a log scale?`;
    }
    throw new Error(
      `Cannot evaluate: ${what} ${report}. Pearson r and the MSE are undefined with them; remove or fill ` +
        `those values${cause}`,
    );
  }
  for (const { b, p, t } of joined) {
    const Gb = b.genes.length;
    const r = pearsonPerGene(p, t, S, Gb);
    const me = columnMeans(t, S, Gb);
    const mse = msePerGene(p, t, S, Gb);
    const base = msePerGene(meanRows(me, S), t, S, Gb);
    summary[b.head.name] = headMetrics(r, b.genes, me, mse, base, o);
    for (let g = 0; g < Gb; g++) {
      perGene.gene.push(b.genes[g]);
      perGene.head.push(b.head.name);
      perGene.r.push(r[g]);
      perGene.mse.push(mse[g]);
      perGene.baselineMse.push(base[g]);
      perGene.meanExpression.push(me[g]);
      all.r.push(r[g]);
      all.names.push(b.genes[g]);
      all.me.push(me[g]);
      all.mse.push(mse[g]);
      all.base.push(base[g]);
    }
  }
  summary.all = headMetrics(all.r, all.names, all.me, all.mse, all.base, o);

  let tumor: EvaluateResult["tumor"] = null;
  if (pred.tumor && truth.tumor) {
    const scores: number[] = [], labels: boolean[] = [];
    for (const name of spots) {
      const sc = pred.tumor[predSpot.get(name)!], lb = truth.tumor[truthSpot.get(name)!];
      if (Number.isNaN(sc) || Number.isNaN(lb)) continue;
      scores.push(sc);
      labels.push(lb > 0.5);
    }
    const positives = labels.filter((l) => l).length;
    const correct = scores.filter((s, i) => (s > 0.5) === labels[i]).length;
    tumor = {
      auc: rocAuc(scores, labels),
      positives,
      negatives: labels.length - positives,
      accuracy: labels.length ? correct / labels.length : NaN,
      source: pred.tumorSource ?? "",
    };
  }
  return {
    predictions: pred.source,
    truth: truth.source,
    spots: {
      predicted: pred.names.length,
      truth: truth.names.length,
      joined: S,
      onlyPredicted: onlyPred.length,
      onlyTruth: onlyTruth.length,
      examplesOnlyPredicted: onlyPred.slice(0, EXAMPLES),
      examplesOnlyTruth: onlyTruth.slice(0, EXAMPLES),
    },
    genes: {
      predicted: predictedGenes.size,
      truth: G0,
      joined: taken.size,
      onlyPredicted: predictedGenes.size - taken.size,
      onlyTruth: onlyTruthGenes.length,
      examplesOnlyTruth: onlyTruthGenes.slice(0, EXAMPLES),
    },
    summary: summary as EvaluateResult["summary"],
    tumor,
    perGene,
  };
}

/** `(spots, genes)`: every row the per-gene means `me` (the mean-expression baseline's prediction). */
function meanRows(me: Float64Array, spots: number): Float64Array {
  const out = new Float64Array(spots * me.length);
  for (let s = 0; s < spots; s++) out.set(me, s * me.length);
  return out;
}

/** The r summary of some genes with their MSEs and the baseline's, over all of them and over the list. */
function headMetrics(
  r: ArrayLike<number>,
  genes: string[],
  me: ArrayLike<number>,
  mse: ArrayLike<number>,
  base: ArrayLike<number>,
  o: { genes?: string[]; topK?: number },
): HeadMetrics {
  const { list, ...s } = summarize(r, { geneNames: genes, meanExpression: me, topK: o.topK, genes: o.genes });
  const m: HeadMetrics = { ...s, mse: nanMean(mse), baselineMse: nanMean(base) };
  if (list && o.genes) {
    const listed = new Set(o.genes);
    const idx = genes.flatMap((g, i) => (listed.has(g) ? [i] : []));
    m.list = { ...list, mse: nanMean(idx.map((i) => mse[i])), baselineMse: nanMean(idx.map((i) => base[i])) };
  }
  return m;
}

/** "holds N values that are not finite (…) in G genes: A (n), B (n), …; the first: spot S, gene A (NaN)", or null. */
function nonFiniteReport(
  blocks: { genes: string[]; cells: NonFiniteCells }[],
  spots: string[],
  csv: boolean,
): string | null {
  let count = 0, nan = 0, inf = 0;
  const genes: [string, number][] = [];
  let first: string | null = null;
  for (const { genes: names, cells } of blocks) {
    count += cells.count, nan += cells.nan, inf += cells.inf;
    cells.perGene.forEach((n, g) => n > 0 && genes.push([names[g], n]));
    if (!first && cells.first) {
      const f = cells.first;
      first = `spot ${spots[f.spot]}, gene ${names[f.gene]} (${f.value})`;
    }
  }
  if (count === 0) return null;
  genes.sort((a, b) => b[1] - a[1]);
  const list = genes.slice(0, EXAMPLES).map(([g, n]) => `${g} (${n})`).join(", ") +
    (genes.length > EXAMPLES ? `, … ${genes.length - EXAMPLES} more` : "");
  const kinds = [
    nan ? `${nan} NaN${csv ? " (an empty or nan cell)" : ""}` : "",
    inf ? `${inf} infinite` : "",
  ]
    .filter((k) => k).join(", ");
  return `holds ${count} values that are not finite (${kinds}) at the joined spots, in ${genes.length} ` +
    `gene${genes.length === 1 ? "" : "s"}: ${list}; the first: ${first}`;
}

/** JSON with NaN / ±Infinity written as null. */
export function toJson(x: unknown): string {
  return JSON.stringify(x, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 1) + "\n";
}
