/**
 * `he2gene selftest`: passes on this adapter with every op present, and a fault injected on the GPU
 * (`HE2GENE_SELFTEST_FAULT`) fails exactly the named ops, exits 1 and names them.
 */
import { runCli } from "../bad_inputs/harness.ts";
import { assertEquals, engine } from "../helpers.ts";
import { SELFTEST_FAMILIES, selftestOps, type SelftestResult } from "../../ops/selftest.ts";

const FAULT = "HE2GENE_SELFTEST_FAULT";

/** A CLI test with the GPU sanitizers off (as gpuTest: the device keeps a pending `lost` promise). */
function cliTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: false, sanitizeResources: false, fn });
}

async function withFault<T>(value: string, fn: () => Promise<T>): Promise<T> {
  Deno.env.set(FAULT, value);
  try {
    return await fn();
  } finally {
    Deno.env.delete(FAULT);
  }
}

cliTest("selftest --quick passes on this adapter, every op forward and backward in the table", async () => {
  const r = await runCli(["selftest", "--quick"]);
  const what = `--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
  assertEquals(r.code, 0, what);
  const lines = r.stdout.split("\n");
  const m = /^selftest: (\d+) passed, 0 failed$/.exec(lines[lines.length - 1]);
  if (!m || Number(m[1]) < 80) {
    throw new Error(`the last line is not "selftest: N passed, 0 failed": ${what}`);
  }
  if (!/^adapter: .+, backend: .+/.test(lines[0])) throw new Error(`no adapter line first: ${what}`);
  const rows = lines.filter((l) => / ok$/.test(l));
  assertEquals(rows.length, Number(m[1]), "one table row per passed check");
  const shown = new Set(rows.map((l) => l.split(/\s+/)[0]));
  const missing = selftestOps(await engine()).filter((op) => !shown.has(op));
  assertEquals(missing, [], "ops missing from the --quick table");
  for (const op of ["relu_backward", "conv2d_backward_input", "batch_norm_backward", "mse_loss_backward"]) {
    assertEquals(shown.has(op), true, `${op} in the table`);
  }
});

cliTest(
  "a fault injected into relu and conv2d's input gradient fails just those ops and exits 1",
  async () => {
    const faulted = ["relu", "conv2d_backward_input"];
    const r = await withFault(faulted.join(","), () => runCli(["selftest", "--quick", "--json"]));
    const what = `--- stderr ---\n${r.stderr}`;
    assertEquals(r.code, 1, what);
    const out = JSON.parse(r.stdout) as { passed: number; failed: number; results: SelftestResult[] };
    const failed = out.results.filter((x) => !x.ok);
    assertEquals([...new Set(failed.map((x) => x.op))].sort(), [...faulted].sort(), "ops that failed");
    // Every variant of a faulted op fails (both conv2d paths, each block size); every other check passes.
    for (const x of out.results) assertEquals(x.ok, !faulted.includes(x.op), `${x.op} ${x.variant}: ok`);
    assertEquals(out.failed, failed.length);
    assertEquals(out.passed, out.results.length - failed.length);
    assertEquals(new Set(out.results.map((x) => x.family)), new Set(SELFTEST_FAMILIES), "op families");
    const error = r.stderr.split("\n").find((l) => l.startsWith("Error: selftest failed")) ?? "";
    for (const op of faulted) {
      if (!error.includes(op)) throw new Error(`the error does not name ${op}: ${what}`);
    }
  },
);

cliTest("checks shared by two devices (--jobs 2) give the one-device table, in the same order", async () => {
  const args = ["selftest", "--quick", "--only", "relu,relu_backward,matmul,conv2d,max_pool2d", "--json"];
  const runs = [];
  for (const jobs of ["1", "2"]) {
    const r = await runCli([...args, "--jobs", jobs]);
    assertEquals(r.code, 0, `--jobs ${jobs}: ${r.stderr}`);
    runs.push((JSON.parse(r.stdout) as { results: SelftestResult[] }).results);
  }
  const key = (x: SelftestResult) => `${x.op} | ${x.variant} | ${x.shape} | ${x.ok}`;
  assertEquals(runs[1].map(key), runs[0].map(key));
  assertEquals(runs[0].length > 20, true, `${runs[0].length} checks`);
  // Max errors agree too: the same kernels on the same adapter, another device.
  assertEquals(runs[1].map((x) => x.maxError), runs[0].map((x) => x.maxError));
});

cliTest("an unknown fault name is refused with the list of op names", async () => {
  const r = await withFault("relu,conv3d", () => runCli(["selftest", "--quick"]));
  assertEquals(r.code, 1);
  for (const s of ['unknown op "conv3d"', "relu, sigmoid", "conv2d_backward_weight", "adam_step"]) {
    if (!r.stderr.includes(s)) throw new Error(`the message does not name ${s}: ${r.stderr}`);
  }
  assertEquals(r.stdout, "", "nothing printed before the refusal");
});
