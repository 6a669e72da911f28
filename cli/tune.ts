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
import { createEngine } from "../engine/engine.ts";
import {
  defaultTuneClock,
  nothingToTune,
  type TuneClock,
  type TuneResult,
  unknownTuneOp,
} from "../model/tune.ts";
import {
  adapterKey,
  HE2GENE_VERSION,
  loadTuning,
  prepareTuning,
  runTune,
  saveTuning,
  type StoredTuning,
  type TuneMode,
  tuningDir,
  tuningPath,
} from "../model/tune_cache.ts";

export {
  adapterKey,
  HE2GENE_VERSION,
  loadTuning,
  prepareTuning,
  saveTuning,
  type StoredTuning,
  type TuneMode,
  tuningDir,
  tuningPath,
};

/** Usage of `he2gene tune`. */
export const TUNE_USAGE =
  "tune [--quick] [--batch-size 8] [--train-batch-size 2] [--only OP,…] [--clock gpu|wall] [--max-seconds S]\n" +
  "     [--json]\n\n" +
  "  times every variant of conv2d (forward, input and weight gradients), matmul and, at the training batch,\n" +
  "  batch norm that is correct on this adapter, on ResNet-50's shapes, and stores the fastest per shape\n" +
  "  class in $XDG_CACHE_HOME/he2gene/\n" +
  "  (default ~/.cache/he2gene/); predict-patches, predict-slide and train use it from then on\n\n" +
  "  --quick             fewer repetitions (2 instead of 5)\n" +
  "  --batch-size        batch of the inference shapes (default 8)\n" +
  "  --train-batch-size  batch of the training shapes (default 2; 0 skips the gradients)\n" +
  "  --only              only ops starting with these names (conv2d.fwd, conv2d.dx, conv2d.dw, matmul,\n" +
  "                      batchnorm.stats, batchnorm.sums, batchnorm.apply, batchnorm.dx, reduce.rows:\n" +
  "                      the last only where the device has subgroups)\n" +
  "  --clock             how each run is timed: gpu (timestamp queries: the kernels alone) or wall (host\n" +
  "                      clock to completion); default gpu on a hardware adapter, wall on a software one\n" +
  "  --max-seconds S     start no new case after S seconds; the table keeps the cases tuned so far\n" +
  "  --json              print the results as JSON";

/** Parse `--tune`; throws a usage error naming the option. */
export function parseTuneMode(v: string | undefined): TuneMode {
  if (v === undefined) return "cached";
  if (v === "cached" || v === "auto" || v === "off") return v;
  throw new UsageError(`--tune must be cached, auto or off, current value is ${v}`);
}

const ms = (v: number | undefined) => (v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1));

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
  const unknown = unknownTuneOp(only);
  if (unknown) throw new UsageError(`--only: ${unknown}`);
  const e = await createEngine();
  try {
    const a = e.adapterInfo;
    if (clockArg === "gpu" && !e.device.features.has("timestamp-query")) {
      throw new UsageError(`--clock gpu needs the timestamp-query feature, which ${a.name} does not have`);
    }
    const clock = (clockArg as TuneClock | undefined) ?? defaultTuneClock(e);
    const nothing = nothingToTune(e, { batchSize, trainBatchSize, only });
    if (nothing) throw new UsageError(`--only: ${nothing}`);
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
