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

/** Usage of `he2gene selftest`. */
export const SELFTEST_USAGE = "selftest [--quick] [--json] [--only OP,…]\n\n" +
  "  --quick  skip what is slow to compile on a software adapter (32×32 register blocks, most 16×16\n" +
  "           shapes; the tiled matmul behind OpenGL) and the large shapes\n" +
  "  --json   print the results as JSON instead of the table\n" +
  "  --only   check only these ops (e.g. matmul,conv2d_backward_weight)\n\n" +
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

/**
 * Run the self-test and print it; throws an Error naming the failed ops when any failed (exit 1).
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
    },
    strict: true,
    allowPositionals: false,
  });
  const list = (s: string | undefined) => s?.split(",").map((x) => x.trim()).filter(Boolean);
  const fault = list(Deno.env.get("HE2GENE_SELFTEST_FAULT"));
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
    const t0 = performance.now();
    const results = await runSelftest(engine, {
      quick: values.quick,
      fault,
      only: list(values.only),
      // Progress: the check now running (a 32×32 kernel takes 50–130 s to compile on llvmpipe, once).
      onStart: (c) => {
        if (c.index === 0 && !values.json) header();
        status(`[${c.index + 1}/${c.total}] ${c.op} ${c.variant} …`);
      },
      onResult: (r, i, total) => {
        status("");
        if (values.json) {
          if (!r.ok) console.error(`selftest: ${r.op} (${r.variant}) failed: ${r.detail}`);
          return;
        }
        console.log(resultRow(r));
        if (!r.ok) console.log(`    ${r.detail}`);
        if (!tty && (i + 1) % 25 === 0) console.error(`selftest: ${i + 1}/${total} checks done`);
      },
    });
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
