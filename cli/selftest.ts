/**
 * `he2gene selftest [--quick] [--json] [--only OPS]`: every kernel, forward and backward, in every variant
 * this adapter can run, against its CPU reference with the test suite's tolerances (kernels/selftest.ts).
 * Prints the adapter, one table row per (op, variant) as it finishes, and ends with the line
 * `selftest: N passed, N failed`; any failure is an error (exit 1) that names the failed ops.
 *
 * `HE2GENE_SELFTEST_FAULT=op[,op…]` (a test hook) makes those ops' GPU results wrong on the GPU.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine } from "../mod.ts";
import { runSelftest, type SelftestResult } from "../ops/selftest.ts";
import { UsageError } from "./errors.ts";
import type { SelftestJob, SelftestMessage } from "./selftest_worker.ts";

/** Usage of `he2gene selftest`. */
export const SELFTEST_USAGE = "selftest [--quick] [--json] [--only OP,…] [--jobs N]\n\n" +
  "  --quick  skip what is slow to compile on a software adapter (32×32 register blocks, most 16×16\n" +
  "           shapes; the tiled matmul behind OpenGL) and the large shapes\n" +
  "  --json   print the results as JSON instead of the table\n" +
  "  --only   check only these ops (e.g. matmul,conv2d_backward_weight)\n" +
  "  --jobs   how many GPU devices check at once, each compiling its own kernels (default: one per\n" +
  "           CPU core, at most 4; compiling is most of a first run)\n\n" +
  "  HE2GENE_SELFTEST_FAULT=OP[,OP…] makes those ops' GPU results wrong on purpose (a test hook)";

const COLUMNS = [
  ["op", 26],
  ["variant", 32],
  ["shape", 32],
  ["max error", 9],
  ["tolerance", 18],
  ["err/tol", 7],
  ["ms", 7],
  ["", 4],
] as const;

/** A tolerance figure in two significant digits: `1e-5`, `4e-9`, `2.4e-8`. */
const num = (v: number) => Number(v.toPrecision(2)).toExponential();

/** `1e-5·|ref|+1e-6`, `1e-5·Σ|ab|+1e-6` (or another scale a check names) or `exact`. */
function tolText(r: SelftestResult): string {
  const { rtol, atol, relativeTo } = r.tolerance;
  if (Number.isNaN(rtol)) return "–";
  if (rtol === 0 && atol === 0) return "exact";
  const s = relativeTo === "reference" ? "|ref|" : relativeTo === "Σ|a||b|" ? "Σ|ab|" : relativeTo;
  return [rtol ? `${num(rtol)}·${s}` : "", atol ? num(atol) : ""].filter(Boolean).join("+");
}

const cut = (s: string, w: number) => (s.length > w ? s.slice(0, w - 1) + "…" : s.padEnd(w));

function row(cells: string[]): string {
  // Numbers right-aligned: max error, err/tol, ms.
  return cells.map((c, i) => ([3, 5, 6].includes(i) ? c.padStart(COLUMNS[i][1]) : cut(c, COLUMNS[i][1])))
    .join(" ").trimEnd();
}

function resultRow(r: SelftestResult): string {
  const err = Number.isNaN(r.maxError) ? "–" : r.maxError === 0 ? "0" : r.maxError.toExponential(1);
  // err/tol: the worst |err| / (atol + rtol·s) over every value, ≤ 1 passes (max error alone can look
  // large where the values are, e.g. exp(30) ≈ 1e13).
  const ratio = Number.isFinite(r.ratio) ? r.ratio.toFixed(2) : "∞";
  return row([r.op, r.variant, r.shape, err, tolText(r), ratio, r.ms.toFixed(0), r.ok ? "ok" : "FAIL"]);
}

/** How many devices `selftest` checks on by default: one per CPU core, at most 4. */
export function defaultSelftestJobs(): number {
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

/** A failed result for a check whose worker stopped before it had a result. */
function lostResult(
  check: Omit<SelftestResult, "maxError" | "tolerance" | "ratio" | "ms" | "ok">,
  why: string,
) {
  return {
    ...check,
    maxError: NaN,
    tolerance: { rtol: NaN, atol: NaN, relativeTo: "reference" },
    ratio: Infinity,
    ms: 0,
    ok: false,
    detail: `the worker checking it stopped: ${why}`,
  } satisfies SelftestResult;
}

const WORKER_URL = new URL("./selftest_worker.ts", import.meta.url);

/** Whether the helper module is there: not in the bundled self-extracting program (one device there). */
function helpersAvailable(): boolean {
  try {
    return WORKER_URL.protocol !== "file:" || Deno.statSync(WORKER_URL).isFile;
  } catch {
    return false;
  }
}

/**
 * Helper workers left running once done (OpenGL, see `helper`): the process's exit ends them.
 * @internal
 */
const IDLE_HELPERS: Worker[] = [];

/**
 * Run a helper engine in a Worker until the shared counter runs out. Its results go to `accept`; a check
 * it had started when it stopped is a failed result; a worker that cannot start (no second device, or a
 * bundled program without the worker module) is reported through `note` and leaves its share to the others.
 *
 * Behind OpenGL a worker is never terminated: tearing down its GL instance ends EGL's display for
 * the whole process (Mesa 22.3 + Deno 2.9.6: "Failed to make EGL context current: BadDisplay", heap
 * corruption at exit in 2–3 of 15 runs; none in 15 with the workers left to the exit), so it stays idle until
 * `he2gene` exits (the CLI always ends with `Deno.exit`).
 */
function helper(
  job: SelftestJob,
  accept: (r: SelftestResult, index: number, total: number) => void,
  note: (message: string) => void,
): Promise<void> {
  return new Promise((resolve) => {
    let worker: Worker;
    try {
      worker = new Worker(WORKER_URL, { type: "module" });
    } catch (e) {
      note((e as Error).message);
      return resolve();
    }
    let current: Extract<SelftestMessage, { type: "start" }> | null = null;
    const stop = (why?: string) => {
      if (why !== undefined) {
        if (current) accept(lostResult(current.check, why), current.index, current.total);
        else note(why);
      }
      current = null;
      if (job.backend === "gl") IDLE_HELPERS.push(worker);
      else worker.terminate();
      resolve();
    };
    worker.onmessage = (ev: MessageEvent<SelftestMessage>) => {
      const m = ev.data;
      if (m.type === "start") current = m;
      else if (m.type === "result") {
        current = null;
        accept(m.result, m.index, m.total);
      } else if (m.type === "done") stop();
      else stop(m.message);
    };
    worker.onerror = (ev) => {
      ev.preventDefault();
      stop(ev.message);
    };
    worker.postMessage(job);
  });
}

/**
 * Run the self-test and print it; throws an Error naming the failed ops when any failed (exit 1).
 * With `--jobs N` (default one per core, ≤ 4) N − 1 Workers, each with a device of its own, take checks
 * from a counter shared with this thread; the table is printed in the checks' order all the same.
 *
 * @example
 * ```ts
 * await runSelftestCli(["--quick"]); // … selftest: 120 passed, 0 failed
 * ```
 */
export async function runSelftestCli(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      only: { type: "string" },
      jobs: { type: "string" },
    },
    strict: true,
    allowPositionals: false,
  });
  const asked = values.jobs === undefined ? defaultSelftestJobs() : Number(values.jobs);
  if (!Number.isInteger(asked) || asked < 1) {
    throw new UsageError(`--jobs must be an integer ≥ 1, current value is ${values.jobs}`);
  }
  const jobs = helpersAvailable() ? asked : 1;
  const list = (s: string | undefined) => s?.split(",").map((x) => x.trim()).filter(Boolean);
  const fault = list(Deno.env.get("HE2GENE_SELFTEST_FAULT"));
  const only = list(values.only);
  const engine = await createEngine();
  try {
    const a = engine.adapterInfo;
    const tty = !values.json && Deno.stderr.isTerminal();
    const enc = new TextEncoder();
    const status = (s: string) => tty && Deno.stderr.writeSync(enc.encode(`\r\x1b[K${s}`));
    // The header goes out with the first check, after runSelftest has accepted the op names.
    const header = () => {
      console.log(`adapter: ${a.name}${a.software ? " (software)" : ""}, backend: ${a.backend}`);
      if (fault?.length) console.log(`HE2GENE_SELFTEST_FAULT: ${fault.join(", ")} made wrong on purpose`);
      console.log(row(COLUMNS.map(([h]) => h)));
    };
    // Results arrive in any order from the devices; rows are printed in the checks' order.
    const byIndex = new Map<number, SelftestResult>();
    let printed = 0;
    let total = -1; // the number of checks, known when the first starts
    let mismatch = "";
    const accept = (r: SelftestResult, index: number, count: number) => {
      if (count !== total) mismatch = `a helper device listed ${count} checks, this one ${total}`;
      byIndex.set(index, r);
      status("");
      if (values.json) {
        if (!r.ok) console.error(`selftest: ${r.op} (${r.variant}) failed: ${r.detail}`);
      } else {
        for (let x = byIndex.get(printed); x; x = byIndex.get(++printed)) {
          console.log(resultRow(x));
          if (!x.ok) console.log(`    ${x.detail}`);
        }
      }
      if (!tty && byIndex.size % 25 === 0) console.error(`selftest: ${byIndex.size}/${count} checks done`);
    };
    const counter = new SharedArrayBuffer(4);
    const claimed = new Int32Array(counter);
    const helpers: Promise<void>[] = [];
    const t0 = performance.now();
    await runSelftest(engine, {
      quick: values.quick,
      fault,
      only,
      next: () => Atomics.add(claimed, 0, 1),
      // Progress: the check now running (a 32×32 kernel takes 50–130 s to compile on llvmpipe, once).
      onStart: (c) => {
        if (total < 0) {
          total = c.total;
          if (!values.json) header();
          const job: SelftestJob = {
            quick: values.quick,
            fault,
            only,
            counter,
            adapter: a.name,
            backend: a.backend,
          };
          const note = (m: string) =>
            console.error(`selftest: a helper device stopped (${m}); the others go on`);
          for (let j = 1; j < jobs; j++) helpers.push(helper(job, accept, note));
        }
        status(`[${byIndex.size + 1}/${c.total}] ${c.op} ${c.variant} …`);
      },
      onResult: accept,
    });
    await Promise.all(helpers);
    const results = [...byIndex].sort(([i], [j]) => i - j).map(([, r]) => r);
    if (total >= 0 && (results.length !== total || mismatch)) {
      throw new Error(
        `selftest: ${results.length} results for ${total} checks${mismatch ? ` (${mismatch})` : ""}`,
      );
    }
    const failed = results.filter((r) => !r.ok);
    const seconds = (performance.now() - t0) / 1000;
    if (values.json) {
      console.log(JSON.stringify(
        {
          adapter: a,
          quick: values.quick,
          seconds,
          passed: results.length - failed.length,
          failed: failed.length,
          results,
        },
        (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v),
        2,
      ));
    } else {
      console.log(`(${seconds.toFixed(1)} s)`);
      console.log(`selftest: ${results.length - failed.length} passed, ${failed.length} failed`);
    }
    if (failed.length) {
      const ops = [...new Set(failed.map((r) => r.op))];
      throw new Error(
        `selftest failed on ${a.name} (${a.backend}): ${ops.join(", ")} ` +
          `(${failed.map((r) => `${r.op} ${r.variant}`).join("; ")})`,
      );
    }
  } finally {
    engine.destroy();
  }
}
