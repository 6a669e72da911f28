/**
 * `he2gene tune [--quick] [--batch-size N] [--train-batch-size N] [--only OPS] [--json]`: time every correct
 * kernel variant on the shapes ResNet-50 inference and training use on this adapter (model/tune.ts), and
 * store the fastest per (op, shape class) in the tuning cache, `$XDG_CACHE_HOME/he2gene/` (default
 * `~/.cache/he2gene/`), one file per adapter: vendor, architecture, device, name, backend and he2gene's
 * version are in the file's name and checked inside it, so a driver or version change never applies a stale
 * table.
 *
 * Prediction and training call {@linkcode prepareTuning}: `--tune cached` (default) uses the stored table
 * when there is one, else the built-in defaults for the adapter's kind; `--tune auto` tunes first when there
 * is none; `--tune off` uses the built-in defaults.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { UsageError } from "./errors.ts";
import { createEngine, type Engine } from "../engine/engine.ts";
import type { TuningTable } from "../kernels/tuning.ts";
import { useTuning } from "../kernels/tuning.ts";
import { defaultTuneClock, tune, type TuneClock, type TuneOptions, type TuneResult } from "../model/tune.ts";
import denoJson from "../deno.json" with { type: "json" };

/** he2gene's version (deno.json), part of every tuning cache key. */
export const HE2GENE_VERSION: string = denoJson.version;

/** Usage of `he2gene tune`. */
export const TUNE_USAGE =
  "tune [--quick] [--batch-size 8] [--train-batch-size 2] [--only OP,…] [--clock gpu|wall] [--max-seconds S] [--json]\n\n" +
  "  times every variant of conv2d (forward, input and weight gradients), matmul and, at the training batch,\n" +
  "  batch norm that is correct on this adapter, on ResNet-50's shapes, and stores the fastest per shape\n" +
  "  class in $XDG_CACHE_HOME/he2gene/\n" +
  "  (default ~/.cache/he2gene/); predict-patches, predict-slide and train use it from then on\n\n" +
  "  --quick             fewer repetitions (2 instead of 5)\n" +
  "  --batch-size        batch of the inference shapes (default 8)\n" +
  "  --train-batch-size  batch of the training shapes (default 2; 0 skips the gradients)\n" +
  "  --only              only ops starting with these names (conv2d.fwd, conv2d.dx, conv2d.dw, matmul,\n" +
  "                      batchnorm.stats, batchnorm.sums, batchnorm.apply, batchnorm.dx)\n" +
  "  --clock             how each run is timed: gpu (timestamp queries: the kernels alone) or wall (host\n" +
  "                      clock to completion); default gpu on a hardware adapter, wall on a software one\n" +
  "  --max-seconds S     start no new case after S seconds; the table keeps the cases tuned so far\n" +
  "  --json              print the results as JSON";

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
  try {
    const t = JSON.parse(text) as StoredTuning;
    if (typeof t !== "object" || t === null || typeof t.entries !== "object" || t.entries === null) {
      throw new Error("no entries");
    }
    for (const [k, v] of Object.entries(t.entries)) {
      if (typeof v !== "string" || !k.includes("|")) throw new Error(`bad entry "${k}"`);
    }
    if (t.version !== HE2GENE_VERSION || JSON.stringify(t.adapter) !== JSON.stringify(adapterKey(e))) {
      warn(`warning: ${path} was made for another adapter or he2gene version; using built-in defaults`);
      return null;
    }
    return t;
  } catch (err) {
    warn(`warning: ${path} is not a tuning table (${(err as Error).message}); using built-in defaults`);
    return null;
  }
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

/** Parse `--tune`; throws a usage error naming the option. */
export function parseTuneMode(v: string | undefined): TuneMode {
  if (v === undefined) return "cached";
  if (v === "cached" || v === "auto" || v === "off") return v;
  throw new UsageError(`--tune must be cached, auto or off, current value is ${v}`);
}

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
  return t
    ? `kernel variants: tuned table (${Object.keys(t.entries).length} choices) from ${tuningPath(e)}`
    : "kernel variants: built-in defaults (no tuning table; run `he2gene tune`)";
}

async function runTune(
  e: Engine,
  o: TuneOptions,
  progress?: (done: number, total: number, r: TuneResult, partial: StoredTuning) => void | Promise<void>,
): Promise<StoredTuning & { tuned: number; total: number }> {
  // The stored form of a (partial) table.
  const stored = (table: TuningTable): StoredTuning => ({
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
  });
  // onProgress is synchronous: chain the callbacks (each may store the partial table) and wait at the end.
  let pending: Promise<void> = Promise.resolve();
  const { table, results, total } = await tune(e, {
    ...o,
    onProgress: progress &&
      ((d, n, r, t) => {
        pending = pending.then(() => progress(d, n, r, stored(t)));
      }),
  });
  await pending;
  return { ...stored(table), tuned: results.length, total };
}

const ms = (v: number | undefined) => (v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1));

function summary(r: TuneResult): string {
  const best = r.timings.find((t) => t.variant === r.chosen);
  return `${r.op} ${r.label}: default ${ms(r.default.ms)} ms, ${
    best ? `${r.chosen} ${ms(best.ms)} ms` : "default kept"
  }`;
}

/**
 * `he2gene tune`.
 *
 * @example
 * ```ts
 * await runTuneCli(["--quick", "--only", "matmul"]);
 * ```
 */
export async function runTuneCli(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      only: { type: "string" },
      "batch-size": { type: "string", default: "8" },
      "train-batch-size": { type: "string", default: "2" },
      clock: { type: "string" },
      "max-seconds": { type: "string" },
    },
    strict: true,
    allowPositionals: false,
  });
  const int = (name: string, v: string, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      throw new UsageError(`--${name} must be an integer ≥ ${min}, current value is ${v}`);
    }
    return n;
  };
  const batchSize = int("batch-size", values["batch-size"]!, 1);
  const trainBatchSize = int("train-batch-size", values["train-batch-size"]!, 0);
  const maxSecondsArg = values["max-seconds"];
  const maxSeconds = maxSecondsArg === undefined ? undefined : Number(maxSecondsArg);
  if (maxSeconds !== undefined && !(Number.isFinite(maxSeconds) && maxSeconds > 0)) {
    throw new UsageError(`--max-seconds must be a number of seconds > 0, current value is ${maxSecondsArg}`);
  }
  const clockArg = values.clock;
  if (clockArg !== undefined && clockArg !== "gpu" && clockArg !== "wall") {
    throw new UsageError(`--clock must be gpu or wall, current value is ${clockArg}`);
  }
  const only = values.only?.split(",").map((s) => s.trim()).filter(Boolean);
  const known = [
    "conv2d.fwd",
    "conv2d.dx",
    "conv2d.dw",
    "matmul",
    "batchnorm.stats",
    "batchnorm.sums",
    "batchnorm.apply",
    "batchnorm.dx",
  ];
  for (const o of only ?? []) {
    if (!known.some((k) => k.startsWith(o))) {
      throw new UsageError(`--only: unknown op "${o}" (tunable: ${known.join(", ")})`);
    }
  }
  const e = await createEngine();
  try {
    const a = e.adapterInfo;
    if (clockArg === "gpu" && !e.device.features.has("timestamp-query")) {
      throw new UsageError(`--clock gpu needs the timestamp-query feature, which ${a.name} does not have`);
    }
    const clock = (clockArg as TuneClock | undefined) ?? defaultTuneClock(e);
    if (!values.json) {
      console.log(
        `adapter: ${a.name}${a.software ? " (software)" : ""}, backend: ${a.backend}, clock: ${
          clock === "gpu" ? "gpu (timestamp queries)" : "wall"
        }`,
      );
      console.log(
        `${"op".padEnd(15)} ${"shape".padEnd(40)} ${"default ms".padStart(10)} ${"chosen".padEnd(22)} ` +
          `${"ms".padStart(8)} ${"GFLOP/s".padStart(8)} ${"case s".padStart(7)}`,
      );
    }
    const results: TuneResult[] = [];
    // "case s": the seconds a case took, shader compilation of every candidate included.
    let caseStart = performance.now();
    const t = await runTune(
      e,
      { quick: values.quick, batchSize, trainBatchSize, only, clock, maxSeconds },
      async (_d, _n, r, partial) => {
        results.push(r);
        // Stored after every case: a run that is stopped (a time limit, ^C) keeps what it measured.
        await saveTuning(e, partial);
        if (values.json) return;
        const best = r.timings.find((x) => x.variant === r.chosen) ?? r.default;
        console.log(
          `${r.op.padEnd(15)} ${r.label.padEnd(40)} ${ms(r.default.ms).padStart(10)} ${
            r.chosen.padEnd(22)
          } ` +
            `${ms(best.ms).padStart(8)} ${(best.gflops ?? 0).toFixed(1).padStart(8)} ` +
            `${((performance.now() - caseStart) / 1000).toFixed(1).padStart(7)}`,
        );
        caseStart = performance.now();
        for (const x of r.timings) if (x.error) console.log(`    ${x.variant}: not used (${x.error})`);
      },
    );
    const { tuned, total, ...table } = t;
    const path = await saveTuning(e, table);
    if (values.json) console.log(JSON.stringify({ path, table, results, tuned, total }, null, 2));
    else {
      if (tuned < total) {
        console.log(`tune: stopped after ${maxSeconds} s (--max-seconds): ${tuned} of ${total} cases tuned`);
      }
      console.log(
        `tune: ${Object.keys(table.entries).length} choices differ from the defaults; stored in ${path}`,
      );
    }
  } finally {
    e.destroy();
  }
}
