/**
 * Evaluation metrics of spot-level gene expression prediction, in plain TypeScript and float64:
 * Pearson r per gene and its summaries (mean, median, top-k genes by mean expression, a gene list such as
 * the 785 HER2+ HVGs), the tumour ROC AUC, and the mean-expression baseline.
 *
 * Matrices are row-major `(spots, genes)` float32 arrays, as the model writes them. Every accumulation is in
 * float64 with the two-pass (centred) formula, so a gene with a large mean and a small variance keeps its
 * digits.
 *
 * References: Pearson r as `numpy.corrcoef` / `scipy.stats.pearsonr`; ROC AUC as sklearn's
 * `roc_auc_score` (the Mann–Whitney U statistic with tied scores at their average rank,
 * https://en.wikipedia.org/wiki/Mann%E2%80%93Whitney_U_test#Area-under-curve_(AUC)_statistic_for_ROC_curves).
 *
 * @module
 */

function checkMatrix(what: string, a: ArrayLike<number>, spots: number, genes: number): void {
  if (!Number.isInteger(spots) || !Number.isInteger(genes) || spots < 0 || genes < 0) {
    throw new RangeError(`Cannot compute ${what}: shape (${spots}, ${genes}) is not a matrix shape`);
  }
  if (a.length !== spots * genes) {
    throw new RangeError(
      `Cannot compute ${what}: shape (${spots}, ${genes}) needs ${spots * genes} values, ` +
        `current value has ${a.length}`,
    );
  }
}

/** Per-gene (column) means of a `(spots, genes)` matrix, in float64. */
export function columnMeans(a: ArrayLike<number>, spots: number, genes: number): Float64Array {
  checkMatrix("column means", a, spots, genes);
  const m = new Float64Array(genes);
  for (let s = 0; s < spots; s++) {
    const row = s * genes;
    for (let g = 0; g < genes; g++) m[g] += a[row + g];
  }
  for (let g = 0; g < genes; g++) m[g] /= spots;
  return m;
}

/**
 * Pearson correlation per gene between predicted and true expression, both `(spots, genes)` row-major.
 * A gene whose predicted or true column is constant (zero variance, or fewer than 2 spots) gets NaN, as
 * `scipy.stats.pearsonr` does (with a warning); {@linkcode summarize} counts them as `constant`. A column
 * holding NaN or ±Infinity gets NaN too, which is not a constant column: check the inputs with
 * {@linkcode nonFiniteCells} first and report them as such.
 *
 * @example
 * ```ts
 * const r = pearsonPerGene(pred, truth, 4, 2); // Float64Array(2)
 * ```
 */
export function pearsonPerGene(
  pred: Float32Array,
  truth: Float32Array,
  spots: number,
  genes: number,
): Float64Array {
  checkMatrix("Pearson r (pred)", pred, spots, genes);
  checkMatrix("Pearson r (truth)", truth, spots, genes);
  const mp = columnMeans(pred, spots, genes), mt = columnMeans(truth, spots, genes);
  // Σ(p−p̄)(t−t̄), Σ(p−p̄)², Σ(t−t̄)² per gene, walking rows for memory order.
  const sxy = new Float64Array(genes), sxx = new Float64Array(genes), syy = new Float64Array(genes);
  for (let s = 0; s < spots; s++) {
    const row = s * genes;
    for (let g = 0; g < genes; g++) {
      const dp = pred[row + g] - mp[g], dt = truth[row + g] - mt[g];
      sxy[g] += dp * dt;
      sxx[g] += dp * dp;
      syy[g] += dt * dt;
    }
  }
  const r = new Float64Array(genes);
  for (let g = 0; g < genes; g++) {
    if (!(sxx[g] > 0) || !(syy[g] > 0)) {
      r[g] = NaN;
      continue;
    }
    // Clamp: rounding can give |r| a hair above 1 for (anti)collinear columns.
    r[g] = Math.max(-1, Math.min(1, sxy[g] / Math.sqrt(sxx[g] * syy[g])));
  }
  return r;
}

/** The non-finite values (NaN, ±Infinity) of a `(spots, genes)` matrix, as {@linkcode nonFiniteCells} counts them. */
export interface NonFiniteCells {
  /** All non-finite values. */
  count: number;
  nan: number;
  /** +Infinity and −Infinity. */
  inf: number;
  /** Non-finite values per gene (column). */
  perGene: Uint32Array;
  /** The first one in row-major order, or null when there is none. */
  first: { spot: number; gene: number; value: number } | null;
}

/**
 * Count the NaN and ±Infinity values of a `(spots, genes)` matrix, per gene, with the first one's place.
 *
 * @example
 * ```ts
 * const bad = nonFiniteCells(Float32Array.of(1, NaN, Infinity, 2), 2, 2);
 * // bad.count 2, bad.nan 1, bad.inf 1, bad.perGene [1, 1], bad.first { spot: 0, gene: 1, value: NaN }
 * ```
 */
export function nonFiniteCells(a: ArrayLike<number>, spots: number, genes: number): NonFiniteCells {
  checkMatrix("non-finite values", a, spots, genes);
  const perGene = new Uint32Array(genes);
  let nan = 0, inf = 0;
  let first: NonFiniteCells["first"] = null;
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    if (Number.isFinite(v)) continue;
    if (Number.isNaN(v)) nan++;
    else inf++;
    perGene[i % genes]++;
    first ??= { spot: Math.floor(i / genes), gene: i % genes, value: v };
  }
  return { count: nan + inf, nan, inf, perGene, first };
}

/** Mean squared error per gene, in float64. */
export function msePerGene(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  spots: number,
  genes: number,
): Float64Array {
  checkMatrix("MSE (pred)", pred, spots, genes);
  checkMatrix("MSE (truth)", truth, spots, genes);
  const m = new Float64Array(genes);
  for (let s = 0; s < spots; s++) {
    const row = s * genes;
    for (let g = 0; g < genes; g++) {
      const d = pred[row + g] - truth[row + g];
      m[g] += d * d;
    }
  }
  for (let g = 0; g < genes; g++) m[g] /= spots;
  return m;
}

/** The mean of the non-NaN values (NaN when there are none). */
export function nanMean(v: ArrayLike<number>): number {
  let s = 0, n = 0;
  for (let i = 0; i < v.length; i++) {
    if (!Number.isNaN(v[i])) {
      s += v[i];
      n++;
    }
  }
  return n === 0 ? NaN : s / n;
}

/** The median of the non-NaN values, as `numpy.nanmedian` (mean of the two middle values for an even count). */
export function nanMedian(v: ArrayLike<number>): number {
  const a = Float64Array.from(Array.from(v).filter((x) => !Number.isNaN(x))).sort();
  if (a.length === 0) return NaN;
  const h = a.length >> 1;
  return a.length % 2 ? a[h] : (a[h - 1] + a[h]) / 2;
}

/** Summary of a subset of genes' r: how many, how many are NaN (constant), their mean and median. */
export interface SubsetSummary {
  /** Genes in the subset (that were found among `geneNames`). */
  n: number;
  /** Genes with a defined r. */
  valid: number;
  /** Genes with r = NaN (a constant predicted or true column). */
  constant: number;
  mean: number;
  median: number;
}

/** What {@linkcode summarize} returns. */
export interface PearsonSummary extends SubsetSummary {
  /** Mean over the `k` genes of highest mean expression (absent without `meanExpression`). */
  topK?: SubsetSummary & { k: number; genes: string[] };
  /** Mean over the given gene list; `missing` names the listed genes absent from `geneNames`. */
  list?: SubsetSummary & { listed: number; missing: string[] };
}

/** Options of {@linkcode summarize}. */
export interface SummarizeOptions {
  /** The name of each gene of `r`, in order. */
  geneNames: string[];
  /** Mean expression per gene (aligned with `geneNames`), to pick the top-k genes. */
  meanExpression?: ArrayLike<number>;
  /** How many genes of highest mean expression to average (default 50, as HE2Gene's figures). */
  topK?: number;
  /** A gene list to average over, e.g. the 785 HER2+ HVGs of `her_hvg_cut_1000.npy`. */
  genes?: string[];
}

function subset(r: ArrayLike<number>, idx: number[]): SubsetSummary {
  const v = idx.map((i) => r[i]);
  const valid = v.filter((x) => !Number.isNaN(x)).length;
  return { n: v.length, valid, constant: v.length - valid, mean: nanMean(v), median: nanMedian(v) };
}

/**
 * Summarise per-gene Pearson r: mean and median over the genes with a defined r (NaN genes are counted in
 * `constant` and left out, as `numpy.nanmean`), the mean over the top-k genes by mean expression (ties broken
 * by gene order), and the mean over a gene list.
 *
 * @example
 * ```ts
 * const r = pearsonPerGene(pred, truth, spots, genes.length);
 * const s = summarize(r, { geneNames: genes, meanExpression: columnMeans(truth, spots, genes.length) });
 * console.log(s.mean, s.median, s.topK?.mean);
 * ```
 */
export function summarize(r: ArrayLike<number>, o: SummarizeOptions): PearsonSummary {
  const G = r.length;
  if (o.geneNames.length !== G) {
    throw new RangeError(
      `Cannot summarize: ${G} values of r, but geneNames has ${o.geneNames.length} names`,
    );
  }
  const all = Array.from({ length: G }, (_, i) => i);
  const out: PearsonSummary = subset(r, all);
  if (o.meanExpression) {
    const me = o.meanExpression;
    if (me.length !== G) {
      throw new RangeError(
        `Cannot summarize: meanExpression has ${me.length} values, current r has ${G} genes`,
      );
    }
    const k = Math.min(o.topK ?? 50, G);
    if (!(k >= 0) || !Number.isInteger(k)) {
      throw new RangeError(
        `Cannot summarize: topK must be a non-negative integer, current value is ${o.topK}`,
      );
    }
    const order = all.slice().sort((a, b) => (me[b] - me[a]) || (a - b));
    const top = order.slice(0, k);
    out.topK = { k, genes: top.map((i) => o.geneNames[i]), ...subset(r, top) };
  }
  if (o.genes) {
    const at = new Map<string, number>();
    o.geneNames.forEach((g, i) => {
      if (!at.has(g)) at.set(g, i);
    });
    const listed = [...new Set(o.genes)];
    const found = listed.filter((g) => at.has(g));
    out.list = {
      listed: listed.length,
      missing: listed.filter((g) => !at.has(g)),
      ...subset(r, found.map((g) => at.get(g)!)),
    };
  }
  return out;
}

/**
 * Area under the ROC curve of `scores` for binary `labels` (true / nonzero = positive), equal to sklearn's
 * `roc_auc_score`: tied scores take their average rank. NaN when one class is absent (sklearn raises).
 *
 * @example
 * ```ts
 * rocAuc([0.1, 0.4, 0.35, 0.8], [false, false, true, true]); // 0.75
 * ```
 */
export function rocAuc(scores: ArrayLike<number>, labels: ArrayLike<boolean | number>): number {
  const n = scores.length;
  if (labels.length !== n) {
    throw new RangeError(`Cannot compute ROC AUC: ${n} scores, but ${labels.length} labels`);
  }
  for (let i = 0; i < n; i++) {
    if (Number.isNaN(scores[i])) {
      throw new RangeError(`Cannot compute ROC AUC: score ${i} is NaN`);
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  let nPos = 0, rankSumPos = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j + 1 < n && scores[order[j + 1]] === scores[order[i]]) j++;
    const rank = (i + j) / 2 + 1; // average 1-based rank of the tie group i..j
    for (let t = i; t <= j; t++) {
      if (labels[order[t]]) {
        nPos++;
        rankSumPos += rank;
      }
    }
    i = j + 1;
  }
  const nNeg = n - nPos;
  if (nPos === 0 || nNeg === 0) return NaN;
  return (rankSumPos - nPos * (nPos + 1) / 2) / (nPos * nNeg);
}

/** The mean-expression baseline: each gene predicted as its mean over the training spots. */
export interface MeanBaseline {
  /** (genes,) training mean per gene. */
  mean: Float64Array;
  /** `(spots, genes)` float32 predictions for `spots` spots: every row is `mean`. */
  predict(spots: number): Float32Array;
  /**
   * Score against a test truth `(spots, genes)`. Pearson r is undefined for a constant prediction, so `r`
   * is all NaN; the literature's number for this baseline is the MSE (`mse` = mean over genes of the
   * per-gene MSE, i.e. the MSE over all values).
   */
  score(truth: Float32Array, spots: number): { mse: number; msePerGene: Float64Array; r: Float64Array };
}

/**
 * The "predict the training mean" baseline of ST-Net (He et al. 2020) and HE2Gene (Chen et al. 2024).
 * Every spot gets the same prediction, so its Pearson r per gene is undefined (a constant column; NaN here,
 * as scipy) — report it by its MSE against the test truth, and compare a model's MSE
 * ({@linkcode msePerGene}) with it; r for the baseline is reported as NaN.
 *
 * @example
 * ```ts
 * const b = meanExpressionBaseline(trainTruth, trainSpots, genes);
 * const { mse } = b.score(testTruth, testSpots); // r: all NaN
 * ```
 */
export function meanExpressionBaseline(
  trainTruth: Float32Array,
  spotsTrain: number,
  genes: number,
): MeanBaseline {
  if (spotsTrain < 1) {
    throw new RangeError(`Cannot fit the mean baseline: current value of spotsTrain is ${spotsTrain}`);
  }
  const mean = columnMeans(trainTruth, spotsTrain, genes);
  const predict = (spots: number) => {
    const out = new Float32Array(spots * genes);
    for (let s = 0; s < spots; s++) out.set(mean, s * genes);
    return out;
  };
  return {
    mean,
    predict,
    score(truth, spots) {
      checkMatrix("the mean baseline's score", truth, spots, genes);
      // Against the float64 means (not the float32 prediction) so the MSE is exact.
      const m = new Float64Array(genes);
      for (let s = 0; s < spots; s++) {
        for (let g = 0; g < genes; g++) {
          const d = mean[g] - truth[s * genes + g];
          m[g] += d * d;
        }
      }
      for (let g = 0; g < genes; g++) m[g] /= spots;
      return { mse: nanMean(m), msePerGene: m, r: new Float64Array(genes).fill(NaN) };
    },
  };
}
