/// <reference lib="dom" />
/**
 * `deno task test:browser`: the page in headless Chromium, on Chrome's WebGPU (Dawn; SwiftShader without
 * a GPU). Builds the bundle, serves it, and checks:
 * - the tune page (`?tune=quick&only=…`, two ops) stores a table that the later pages apply, and refuses an
 *   unknown op by name;
 * - the kernel self-test page (`?selftest=quick`; `--full`: every variant) passes on the browser's adapter;
 * - the device got the adapter's limits, not the browser's defaults (128 MiB bindings, 16 KiB workgroup
 *   memory), or says why it fell back;
 * - a prediction through the URL contract on real patches (`../shared/data/he2gene/exps`, skipped with a
 *   message when absent) equals the CLI's `predict-patches` on the same files within 1e-4;
 * - a missing file ends in a title `… error: …`; the interactive page loads.
 *
 * Prints each check, the adapter's name, and last `N passed, N failed`; exits 1 when any failed.
 * `HE2GENE_CHROMIUM` names the browser (default `/usr/bin/chromium`).
 *
 * @module
 */
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { decodeNpz } from "../slide/npy.ts";
import { buildWeb } from "./build.ts";
import type { PageState } from "./app.ts";
import { serveWeb } from "./serve.ts";
import { tinyCheckpoint } from "./tiny_checkpoint.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PATCHES = join(ROOT, "..", "shared", "data", "he2gene", "exps");
const TOL = 1e-4;
const full = Deno.args.includes("--full");
const chromium = Deno.env.get("HE2GENE_CHROMIUM") ?? "/usr/bin/chromium";

let passed = 0, failed = 0, last = performance.now();
function check(name: string, ok: boolean, detail = ""): void {
  if (ok) passed++;
  else failed++;
  const s = ((performance.now() - last) / 1000).toFixed(0);
  last = performance.now();
  console.log(`${ok ? "ok    " : "FAILED"} ${name}${detail ? `: ${detail}` : ""} (${s} s)`);
}

/** Open `url` and wait until the title ends in `done` or holds `error:`; the page's state. */
async function open(
  browser: Browser,
  url: string,
  timeoutMs: number,
  before?: (page: Page) => Promise<unknown>,
): Promise<{ title: string; state: PageState; page: Page }> {
  const page = await browser.newPage();
  await before?.(page);
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(
    () =>
      /done$|error:/.test(document.title) ||
      (globalThis as unknown as { he2gene?: PageState }).he2gene?.status.startsWith("ready"),
    { timeout: timeoutMs, polling: 500 },
  );
  const state = await page.evaluate(() => (globalThis as unknown as { he2gene: PageState }).he2gene);
  if (errors.length) state.error = `${state.error ?? ""} page errors: ${errors.join("; ")}`;
  return { title: await page.title(), state, page };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  try {
    await Deno.stat(chromium);
  } catch {
    console.error(`${chromium} not found: apt-get install -y chromium (or set HE2GENE_CHROMIUM)`);
    check("chromium is installed", false);
    return;
  }
  await buildWeb({ minify: true });
  const tmp = await Deno.makeTempDir({ prefix: "he2gene-browser-" });
  const { server, url } = serveWeb({
    port: 0,
    quiet: true,
    mounts: { "/patches/": PATCHES, "/tmp/": tmp },
  });
  const browser = await puppeteer.launch({
    executablePath: chromium,
    args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu"],
    protocolTimeout: 900_000,
  });
  try {
    // Tuning on the browser's adapter, two ops only (the batch-norm statistics, the row reductions: their
    // subgroup variants where Chrome offers subgroups); the table goes to localStorage, and the later pages
    // on this origin apply it.
    const tu = await open(browser, `${url}index.html?tune=quick&only=batchnorm.stats,reduce.rows`, 900_000);
    const tuned = tu.state.tuning;
    check(
      "the tune page times the variants and stores the table",
      tu.title.endsWith("done") && tuned?.source === "tuned" && (tuned.cases ?? 0) > 0,
      tuned ? `${tuned.cases} cases, ${tuned.entries} choices differ from the defaults` : tu.title,
    );
    await tu.page.close();
    // An unknown op is refused before anything is timed or stored (the next page still finds the table).
    const badOp = await open(browser, `${url}index.html?tune=quick&only=softmax`, 60_000);
    check(
      "the tune page names an unknown op",
      badOp.title.includes('error: Cannot tune: only= names an unknown op "softmax" (tunable: conv2d.fwd,'),
      badOp.title,
    );
    await badOp.page.close();

    // The kernel self-test on the browser's adapter.
    const st = await open(browser, `${url}index.html?selftest${full ? "" : "=quick"}`, 900_000);
    const s = st.state.selftest;
    console.log(
      `adapter: ${st.state.adapter ?? "none"}${
        st.state.limits?.fallback ? ` (${st.state.limits.fallback})` : ""
      }`,
    );
    check(
      `selftest page (${full ? "full" : "quick"}): every kernel matches its CPU reference`,
      !!s && s.failed === 0 && s.passed > 0,
      s
        ? `${s.passed} passed, ${s.failed} failed${
          s.failures.map((f) => `\n  ${f.op} ${f.variant}: ${f.detail}`).join("")
        }`
        : st.title,
    );
    check(
      "a later page applies the stored tuning table",
      st.state.tuning?.source === "stored" && st.state.tuning.entries === tuned?.entries,
      JSON.stringify(st.state.tuning),
    );
    const l = st.state.limits;
    check(
      "the device has the adapter's limits, beyond the browser's defaults (or says why not)",
      !!l && (l.fallback !== undefined || (l.maxStorageBufferBindingSize > 128 * 2 ** 20 &&
        l.maxComputeWorkgroupStorageSize >= 16 * 2 ** 10)),
      l
        ? `storage binding ${l.maxStorageBufferBindingSize / 2 ** 20} MiB, workgroup memory ` +
          `${l.maxComputeWorkgroupStorageSize / 1024} KiB`
        : "no limits reported",
    );
    await st.page.close();

    // A prediction through the URL contract, against the CLI on the same files.
    const files = await Array.fromAsync(Deno.readDir(PATCHES)).catch(() => null);
    const tifs = files?.filter((f) => f.isFile && f.name.endsWith(".tif")).map((f) => f.name).sort().slice(
      0,
      4,
    );
    if (!tifs?.length) {
      console.log(`skipped: the prediction parity check needs ${PATCHES} (see ../shared/data/README.md)`);
    } else {
      await tinyCheckpoint(join(tmp, "tiny.safetensors"), {
        target: ["FASN", "ERBB2", "GNAS"],
        aux: [..."abcde"],
      });
      await Deno.writeTextFile(join(tmp, "target_genes.txt"), "FASN\nERBB2\nGNAS\n");
      await Deno.writeTextFile(join(tmp, "aux_genes.txt"), "a\nb\nc\nd\ne\n");
      const dir = join(tmp, "patches");
      await Deno.mkdir(dir);
      for (const f of tifs) await Deno.copyFile(join(PATCHES, f), join(dir, f));
      const cli = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          "--allow-write",
          "--allow-env",
          join(ROOT, "cli", "main.ts"),
          "predict-patches",
          dir,
          "--weights",
          join(tmp, "tiny.safetensors"),
          "--tta",
          "tta",
          "--batch-size",
          "4",
          "--quiet",
          "--target-genes",
          join(tmp, "target_genes.txt"),
          "--aux-genes",
          join(tmp, "aux_genes.txt"),
          "--out",
          join(tmp, "cli"),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (cli.code !== 0) {
        check("the CLI's predict-patches runs", false, new TextDecoder().decode(cli.stderr));
      } else {
        const want = decodeNpz(await Deno.readFile(join(tmp, "cli", "predictions.npz")), "predictions.npz");
        const q = new URLSearchParams({
          weights: "/tmp/tiny.safetensors",
          images: tifs.map((f) => `/patches/${f}`).join(","),
          tta: "tta",
          target_genes: "/tmp/target_genes.txt",
          aux_genes: "/tmp/aux_genes.txt",
        });
        // The browser's numbers against the CLI's: names and genes equal, and the largest differences.
        const compare = (r: PageState["result"]) => {
          if (!r) return { ok: false, text: "no result" };
          const d = {
            target: maxDiff(r.target.flat(), want.target.data as Float32Array),
            aux: maxDiff(r.aux.flat(), want.aux.data as Float32Array),
            tumor_prob: maxDiff(r.tumor_prob, want.tumor_prob.data as Float32Array),
          };
          const same = JSON.stringify([r.names, r.target_genes, r.aux_genes]) ===
            JSON.stringify([want.names.data, want.target_genes.data, want.aux_genes.data]);
          return {
            ok: same && Object.values(d).every((v) => v <= TOL),
            text: `names and genes ${same ? "equal" : "differ"}; max |browser − CLI|: ` +
              Object.entries(d).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(", "),
          };
        };
        const run = await open(browser, `${url}index.html?${q}`, 600_000);
        const c = compare(run.state.result);
        check(
          `prediction by URL (${tifs.length} patches, tta) equals the CLI's predict-patches within ${TOL}`,
          c.ok && run.title.endsWith("done"),
          run.title.endsWith("done") ? c.text : run.title,
        );
        await run.page.close();

        // A browser that refuses the adapter's limits: the engine falls back to the defaults (128 MiB
        // bindings, 16 KiB workgroup memory), says so, and predicts the same.
        const capped = await open(
          browser,
          `${url}index.html?${q}`,
          600_000,
          (page) =>
            page.evaluateOnNewDocument(() => {
              const request = GPUAdapter.prototype.requestDevice;
              GPUAdapter.prototype.requestDevice = function (d?: GPUDeviceDescriptor) {
                if (d?.requiredLimits && Object.keys(d.requiredLimits).length) {
                  return Promise.reject(new Error("limits refused by the test"));
                }
                return request.call(this, d);
              };
            }),
        );
        const cc = compare(capped.state.result), cl = capped.state.limits;
        check(
          "with the adapter's limits refused, the engine falls back to the defaults and predicts the same",
          cc.ok && capped.title.endsWith("done") && !!cl?.fallback?.includes("limits refused by the test") &&
            cl.maxStorageBufferBindingSize === 128 * 2 ** 20,
          `${capped.title.endsWith("done") ? cc.text : capped.title}; ${
            cl?.fallback ?? "no fallback reported"
          }; ` +
            `storage binding ${(cl?.maxStorageBufferBindingSize ?? 0) / 2 ** 20} MiB, workgroup memory ` +
            `${(cl?.maxComputeWorkgroupStorageSize ?? 0) / 1024} KiB`,
        );
        await capped.page.close();

        // The interactive page on the same files (chosen as a user would), and its CSV download.
        const ui = await browser.newPage();
        await ui.goto(url);
        await ui.waitForFunction(() => document.getElementById("status")?.textContent?.startsWith("ready"));
        const input = await ui.$("input#files");
        await input!.uploadFile(join(tmp, "tiny.safetensors"), ...tifs.map((f) => join(dir, f)));
        await ui.select("#tta", "tta");
        await ui.click("#predict");
        await ui.waitForFunction(() => /done$|error:/.test(document.title), {
          timeout: 600_000,
          polling: 500,
        });
        const got = await ui.evaluate(async () => {
          // Capture the downloads: each link's file name and text.
          const saved: Promise<[string, string]>[] = [];
          HTMLAnchorElement.prototype.click = function () {
            saved.push(fetch(this.href).then((r) => r.text()).then((t) => [this.download, t]));
          };
          document.getElementById("csv")!.click();
          const drawn = (document.getElementById("gene-map") as HTMLCanvasElement).width > 1;
          return {
            state: (globalThis as unknown as { he2gene: PageState }).he2gene,
            files: Object.fromEntries(await Promise.all(saved)),
            drawn,
            title: document.title,
          };
        });
        const csv = (text: string) => text.trim().split("\n").map((l) => l.split(","));
        const wantCsv = csv(await Deno.readTextFile(join(tmp, "cli", "target_count_pred.csv")));
        const gotCsv = csv(got.files["target_count_pred.csv"] ?? "");
        const csvDiff = gotCsv.length === wantCsv.length && gotCsv[0].join() === wantCsv[0].join() &&
            gotCsv.every((row, i) => row[0] === wantCsv[i][0])
          ? maxDiff(
            gotCsv.slice(1).flatMap((r) => r.slice(1).map(Number)),
            wantCsv.slice(1).flatMap((r) => r.slice(1).map(Number)),
          )
          : Infinity;
        const ir = got.state.result;
        const iDiff = ir
          ? maxDiff([...ir.target.flat(), ...ir.aux.flat(), ...ir.tumor_prob], [
            ...want.target.data as Float32Array,
            ...want.aux.data as Float32Array,
            ...want.tumor_prob.data as Float32Array,
          ])
          : Infinity;
        check(
          `the interactive page (files chosen, Predict) equals the CLI within ${TOL}, draws the map and downloads the CSVs`,
          got.title.endsWith("done") && got.drawn && iDiff <= TOL && csvDiff <= TOL &&
            Object.keys(got.files).sort().join() ===
              "aux_count_pred.csv,target_count_pred.csv,tumor_pred.csv",
          `${got.title}; max |page − CLI| ${iDiff.toExponential(1)}, in target_count_pred.csv ${
            csvDiff.toExponential(1)
          }; ` +
            `downloads: ${Object.keys(got.files).join(", ")}`,
        );
        await ui.close();
      }
    }

    // A file that is not there ends in an error title naming it.
    const bad = await open(browser, `${url}index.html?weights=/tmp/missing.pt&images=/tmp/x.tif`, 60_000);
    check(
      'a missing file ends in a title "error: Cannot fetch …"',
      /error: Cannot fetch \/tmp\/missing\.pt: HTTP 404/.test(bad.title),
      bad.title,
    );
    await bad.page.close();

    // The interactive page loads without errors.
    const idle = await open(browser, url, 60_000);
    check(
      "the interactive page loads",
      idle.state.status.startsWith("ready") && !idle.state.error,
      idle.state.error ?? "",
    );
    await idle.page.close();
  } finally {
    await browser.close();
    await server.shutdown();
    await Deno.remove(tmp, { recursive: true });
    console.log(`browser tests took ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
}

try {
  await main();
} catch (e) {
  check("the browser tests run", false, (e as Error).stack ?? String(e));
}
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed ? 1 : 0);
