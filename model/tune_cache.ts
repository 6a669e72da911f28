/**
 * The tuning cache on disk: this adapter's table of kernel variants (model/tune.ts measures it) in
 * `$XDG_CACHE_HOME/he2gene/` (default `~/.cache/he2gene/`), one file per adapter: vendor, architecture,
 * device, name, backend and he2gene's version are in the file's name and checked inside it, so a driver or
 * version change never applies a stale table.
 *
 * Prediction, training and the benchmarks call {@linkcode prepareTuning}: `cached` uses the stored table
 * when there is one, else the built-in defaults for the adapter's kind; `auto` tunes first when there is
 * none; `off` uses the built-in defaults.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import type { TuningTable } from "../kernels/tuning.ts";
import { tuningKey, useTuning } from "../kernels/tuning.ts";
import { isReducedPrecisionMatmul } from "../kernels/matmul.ts";
import { defaultTuneClock, tune, type TuneClock, type TuneOptions, type TuneResult } from "./tune.ts";
import denoJson from "../deno.json" with { type: "json" };

/** he2gene's version (deno.json), part of every tuning cache key. */
export const HE2GENE_VERSION: string = denoJson.version;

/** A stored table: the table plus what it was measured on. */
export interface StoredTuning extends TuningTable {
  version: string;
  adapter: { name: string; vendor: string; architecture: string; device: string; backend: string };
  created: string;
  options: { batchSize: number; trainBatchSize: number; quick: boolean; clock?: TuneClock };
}

/** The adapter identity a table is keyed by. */
export function adapterKey(e: Engine): StoredTuning["adapter"] {
  const a = e.adapterInfo;
  return {
    name: a.name,
    vendor: a.vendor,
    architecture: a.architecture,
    device: a.device,
    backend: a.backend,
  };
}

/** The tuning cache folder: `$XDG_CACHE_HOME/he2gene`, else `~/.cache/he2gene`; null without either. */
export function tuningDir(): string | null {
  const env = (k: string) => {
    try {
      return Deno.env.get(k) || undefined;
    } catch {
      return undefined;
    }
  };
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/he2gene`;
  const home = env("HOME");
  return home ? `${home}/.cache/he2gene` : null;
}

/** FNV-1a of a string, 8 hex digits (a short, stable file-name key). */
function fnv(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** Path of this adapter's table in the cache (null when there is no cache folder). */
export function tuningPath(e: Engine): string | null {
  const dir = tuningDir();
  if (!dir) return null;
  const k = adapterKey(e);
  const slug = `${k.name}-${k.backend}`.replace(/[^A-Za-z0-9.]+/g, "-").replace(/^-|-$/g, "").slice(0, 60);
  return `${dir}/tuning-${slug}-${fnv(JSON.stringify([k, HE2GENE_VERSION]))}.json`;
}

/**
 * Read this adapter's stored table; null when there is none. A file that is unreadable, malformed or made
 * for another adapter or version is reported through `warn` and ignored (defaults apply).
 */
export async function loadTuning(
  e: Engine,
  warn: (s: string) => void = console.error,
): Promise<StoredTuning | null> {
  const path = tuningPath(e);
  if (!path) return null;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    warn(
      `warning: cannot read the tuning table ${path} (${(err as Error).message}); using built-in defaults`,
    );
    return null;
  }
  const t = parseTuning(e, text);
  if (typeof t !== "string") return t;
  warn(`warning: ${path} ${t}; using built-in defaults`);
  return null;
}

/**
 * A stored table's text checked for `e`: the table, or why it cannot apply ("is not a tuning table (…)",
 * "was made for another adapter or he2gene version"). Shared by the cache file and the page's
 * `localStorage` (web/app.ts).
 */
export function parseTuning(e: Engine, text: string): StoredTuning | string {
  let t: StoredTuning;
  try {
    t = JSON.parse(text) as StoredTuning;
    if (typeof t !== "object" || t === null || typeof t.entries !== "object" || t.entries === null) {
      throw new Error("no entries");
    }
    for (const [k, v] of Object.entries(t.entries)) {
      if (typeof v !== "string" || !k.includes("|")) throw new Error(`bad entry "${k}"`);
    }
  } catch (err) {
    return `is not a tuning table (${(err as Error).message})`;
  }
  if (t.version !== HE2GENE_VERSION || JSON.stringify(t.adapter) !== JSON.stringify(adapterKey(e))) {
    return "was made for another adapter or he2gene version";
  }
  return t;
}

/** The key of this adapter's table in a browser's `localStorage` (web/app.ts; the adapter and version). */
export function tuningStorageKey(e: Engine): string {
  return `he2gene.tuning.${fnv(JSON.stringify([adapterKey(e), HE2GENE_VERSION]))}`;
}

/** Write `t` to this adapter's cache file atomically (temporary file, then rename); returns the path. */
export async function saveTuning(e: Engine, t: StoredTuning): Promise<string> {
  const path = tuningPath(e);
  if (!path) throw new Error("Cannot store the tuning table: neither XDG_CACHE_HOME nor HOME is set");
  const dir = path.slice(0, path.lastIndexOf("/"));
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    await Deno.writeTextFile(tmp, JSON.stringify(t, null, 2) + "\n");
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`Cannot write the tuning table ${path}: ${(err as Error).message}`);
  }
  return path;
}

/** How prediction and training choose kernel variants (`--tune`). */
export type TuneMode = "cached" | "auto" | "off";

/**
 * Apply the tuning mode to `e`: load the stored table (`cached`, `auto`), tune and store one first when there
 * is none (`auto`), or use the built-in defaults (`off`). Returns a one-line description for the log.
 */
export async function prepareTuning(
  e: Engine,
  mode: TuneMode,
  log: (s: string) => void = console.error,
  options: TuneOptions = {},
): Promise<string> {
  if (mode === "off") {
    useTuning(e, null);
    return "kernel variants: built-in defaults (--tune off)";
  }
  let t = await loadTuning(e, log);
  if (!t && mode === "auto") {
    log("tuning kernel variants for this adapter (once; --tune auto) …");
    const { tuned: _t, total: _n, ...table } = await runTune(
      e,
      { quick: true, ...options },
      (d, n, r) => log(`  [${d}/${n}] ${summary(r)}`),
    );
    t = table;
    const path = await saveTuning(e, t);
    log(`tuning table stored in ${path}`);
  }
  useTuning(e, t);
  if (!t) return "kernel variants: built-in defaults (no tuning table; run `he2gene tune`)";
  // Reduced-precision variants (f16 tiles) are never tuned: an entry naming one was written by hand.
  const f16 = Object.entries(t.entries)
    .filter(([key, id]) => key.startsWith(tuningKey("matmul", "")) && isReducedPrecisionMatmul(id)).length;
  return `kernel variants: tuned table (${Object.keys(t.entries).length} choices) from ${tuningPath(e)}` +
    (f16 ? `; ${f16} of them reduced precision (f16 operands), not float32 results` : "");
}

/**
 * Tune `e` and return the table as it is stored, with what it was measured on, and how many of the cases
 * were tuned (fewer than `total` when `o.maxSeconds` stopped the run). `progress` gets each case with the
 * table of the cases so far in its stored form (a caller may store it: a run cut short keeps it).
 */
export async function runTune(
  e: Engine,
  o: TuneOptions,
  progress?: (done: number, total: number, r: TuneResult, partial: StoredTuning) => void | Promise<void>,
): Promise<StoredTuning & { tuned: number; total: number }> {
  // onProgress is synchronous: chain the callbacks (each may store the partial table) and wait at the end.
  let pending: Promise<void> = Promise.resolve();
  const { table, results, total } = await tune(e, {
    ...o,
    onProgress: progress &&
      ((d, n, r, t) => {
        pending = pending.then(() => progress(d, n, r, stored(e, o, t)));
      }),
  });
  await pending;
  return { ...stored(e, o, table), tuned: results.length, total };
}

/** The stored form of a (partial) table. */
function stored(e: Engine, o: TuneOptions, table: TuningTable): StoredTuning {
  return {
    version: HE2GENE_VERSION,
    adapter: adapterKey(e),
    created: new Date().toISOString(),
    options: {
      batchSize: o.batchSize ?? 8,
      trainBatchSize: o.trainBatchSize ?? 2,
      quick: o.quick ?? false,
      clock: o.clock ?? defaultTuneClock(e),
    },
    entries: table.entries,
  };
}

const ms = (v: number | undefined) => (v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1));

function summary(r: TuneResult): string {
  const best = r.timings.find((t) => t.variant === r.chosen);
  return `${r.op} ${r.label}: default ${ms(r.default.ms)} ms, ${
    best ? `${r.chosen} ${ms(best.ms)} ms` : "default kept"
  }`;
}
