/**
 * Gene-level preparation of spot counts: library-size normalisation, target / auxiliary gene selection,
 * and spot neighbours on the array grid (for HE2Gene-Spat's spatial loss).
 *
 * @module
 */
import { describeDuplicates, duplicates, type Spot } from "./datasets/types.ts";
import { readNpy } from "./npy.ts";

/**
 * `log1p(scale · count / total)` over all genes of one spot (scale 1e4, as scanpy's `normalize_total` +
 * `log1p`). A spot with no counts maps to zeros.
 *
 * @example
 * ```ts
 * log1pNormalize(new Float32Array([1, 3])); // [log1p(2500), log1p(7500)]
 * ```
 */
export function log1pNormalize(counts: Float32Array, opts: { scale?: number } = {}): Float32Array {
  const scale = opts.scale ?? 1e4;
  let total = 0;
  for (const c of counts) total += c;
  const out = new Float32Array(counts.length);
  if (total > 0) { for (let i = 0; i < counts.length; i++) out[i] = Math.log1p((scale * counts[i]) / total); }
  return out;
}

/** Options of {@linkcode selectTargetGenes}. */
export interface SelectGenesOptions {
  /** Number of target genes by mean count (default 250, HE2Gene's). */
  n?: number;
  /** Genes never chosen as targets (they stay auxiliary). */
  exclude?: string[];
  /** A fixed target list (e.g. read from target_genes.txt) instead of the top-N. */
  list?: string[];
}

/** Target and auxiliary genes with their indices into the dataset's gene list. */
export interface GeneSelection {
  target: string[];
  targetIndex: number[];
  auxiliary: string[];
  auxiliaryIndex: number[];
  /** Genes of `list` that the dataset lacks (left out of `target`). */
  missing: string[];
  /** Mean count of each dataset gene over the given spots. */
  mean: Float64Array;
}

/**
 * Pick HE2Gene's target genes: the top `n` by mean count over `spots` (pass the training spots only), or
 * `list`; every other gene is auxiliary. Ties keep the dataset's gene order. A gene named twice in `genes`
 * or in `list` is refused (RangeError naming them): its counts or its target column would be ambiguous.
 *
 * @example
 * ```ts ignore
 * const { target, auxiliaryIndex } = selectTargetGenes(trainSpots, ds.genes, { n: 250 });
 * ```
 */
export function selectTargetGenes(
  spots: Spot[],
  genes: string[],
  opts: SelectGenesOptions = {},
): GeneSelection {
  const g = genes.length;
  for (
    const [what, names] of [["the dataset's gene list", genes], [
      "the target gene list",
      opts.list ?? [],
    ]] as const
  ) {
    const dups = duplicates(names);
    if (dups.length > 0) {
      throw new RangeError(
        `Cannot select genes: ${what} names ${dups.length} gene(s) more than once: ${
          describeDuplicates(dups)
        }`,
      );
    }
  }
  const mean = new Float64Array(g);
  for (const s of spots) {
    if (!s.counts || s.counts.length !== g) {
      throw new RangeError(
        `Cannot select genes: spot ${s.section}/${s.id} has ${
          s.counts?.length ?? "no"
        } counts, expected ${g}`,
      );
    }
    for (let j = 0; j < g; j++) mean[j] += s.counts[j];
  }
  if (spots.length > 0) { for (let j = 0; j < g; j++) mean[j] /= spots.length; }
  const index = new Map(genes.map((name, j) => [name, j]));
  let targetIndex: number[];
  const missing: string[] = [];
  if (opts.list) {
    targetIndex = [];
    for (const name of opts.list) {
      const j = index.get(name);
      if (j === undefined) missing.push(name);
      else targetIndex.push(j);
    }
  } else {
    if (spots.length === 0) {
      throw new RangeError("Cannot select genes by mean count: current value has 0 spots");
    }
    const n = opts.n ?? 250;
    const skip = new Set(opts.exclude ?? []);
    const order = [...genes.keys()].filter((j) => !skip.has(genes[j]));
    order.sort((a, b) => mean[b] - mean[a] || a - b);
    targetIndex = order.slice(0, n);
  }
  const isTarget = new Uint8Array(g);
  for (const j of targetIndex) isTarget[j] = 1;
  const auxiliaryIndex = [...genes.keys()].filter((j) => !isTarget[j]);
  return {
    target: targetIndex.map((j) => genes[j]),
    targetIndex,
    auxiliary: auxiliaryIndex.map((j) => genes[j]),
    auxiliaryIndex,
    missing,
    mean,
  };
}

/** Neighbour offsets `[dx, dy]` on the array grid, `array = [x, y]`. */
export const GRID_OFFSETS = {
  /** ST (her2st, HBCIS): the 8 spots at ±1 column / row, as HE2Gene-Spat uses. */
  square: [[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]],
  /**
   * Visium: `array = [array_col, array_row]`; columns step by 2 within a row and odd rows are shifted by
   * one, so the 6 touching spots are (col ± 2, row) and (col ± 1, row ± 1). (±1 column in the same row or
   * ±2 columns in the next row are not spots.)
   */
  hex: [[-2, 0], [2, 0], [-1, -1], [1, -1], [-1, 1], [1, 1]],
} as const;

/**
 * For each spot, the indices (into `spots`) of its neighbours on the array grid that are present, within
 * the same section: up to 8 on a square ST grid, up to 6 on Visium's hexagonal grid.
 *
 * @example
 * ```ts
 * const spots = [[0, 0], [1, 0], [1, 1]].map(([x, y], i) =>
 *   ({ id: `${i}`, section: "A", pixel: [0, 0] as [number, number], array: [x, y] as [number, number] }));
 * gridNeighbours(spots); // [[1, 2], [0, 2], [0, 1]]
 * ```
 */
export function gridNeighbours(spots: Spot[], opts: { grid?: "square" | "hex" } = {}): number[][] {
  const offsets = GRID_OFFSETS[opts.grid ?? "square"];
  const at = new Map<string, number>();
  spots.forEach((s, i) => at.set(`${s.section}\0${s.array[0]}\0${s.array[1]}`, i));
  return spots.map((s) => {
    const out: number[] = [];
    for (const [dx, dy] of offsets) {
      const j = at.get(`${s.section}\0${s.array[0] + dx}\0${s.array[1] + dy}`);
      if (j !== undefined) out.push(j);
    }
    return out;
  });
}

/**
 * Read a gene list — text with one name a line (blank lines ignored), or a `.npy` of strings (e.g.
 * `her_hvg_cut_1000.npy`) — refusing a missing file, an empty list and names given twice. Errors name `what`
 * (the option, e.g. `--target-genes`), the file and, for duplicates, their lines.
 *
 * @example
 * ```ts ignore
 * const genes = await readGeneList("target_genes.txt", "--target-genes"); // ["FASN", "ERBB2", …]
 * ```
 */
export async function readGeneList(path: string, what = "gene list"): Promise<string[]> {
  let names: string[], lineOf: (i: number) => number;
  try {
    if (path.toLowerCase().endsWith(".npy")) {
      const a = await readNpy(path);
      if (a.dtype !== "U") throw new Error(`a gene list must hold strings, current dtype is ${a.dtype}`);
      names = (a.data as string[]).map((s) => s.trim());
      lineOf = (i) => i;
    } else {
      const lines = (await Deno.readTextFile(path)).split(/\r?\n/).map((s, i) => [s.trim(), i + 1] as const)
        .filter(([s]) => s !== "");
      names = lines.map(([s]) => s);
      lineOf = (i) => lines[i][1];
    }
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Deno.errors.IsADirectory
      ? "it is a folder"
      : (e as Error).message;
    throw new Error(`Cannot read ${what} ${path}: ${why}`);
  }
  if (names.length === 0) throw new Error(`Cannot use ${what} ${path}: it lists no genes (it is empty)`);
  const dups = duplicates(names);
  if (dups.length > 0) {
    const where = path.toLowerCase().endsWith(".npy") ? "entries" : "lines";
    throw new Error(
      `Cannot use ${what} ${path}: it names ${dups.length} gene(s) more than once: ${
        describeDuplicates(dups, (p) => `${where} ${p.map(lineOf).join(", ")}`)
      }`,
    );
  }
  return names;
}
