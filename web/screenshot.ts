/// <reference lib="dom" />
/**
 * `deno task web:screenshot [OUT.png]`: the README's picture of the page (default `docs/web_page.png`),
 * taken in headless Chromium on its software WebGPU adapter: a tiny random-weight checkpoint (no trained
 * weights ship with he2gene) and the real H&E slide `../shared/data/wsi/CMU-1-Small-Region.svs` are given
 * to the page's file input, predicted as tiles (`tta` single), and the ERBB2 and tumour maps drawn.
 *
 * @module
 */
import puppeteer from "puppeteer-core";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildWeb } from "./build.ts";
import { serveWeb } from "./serve.ts";
import { tinyCheckpoint } from "./tiny_checkpoint.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SLIDE = join(ROOT, "..", "shared", "data", "wsi", "CMU-1-Small-Region.svs");
const out = Deno.args[0] ?? join(ROOT, "docs", "web_page.png");
const chromium = Deno.env.get("HE2GENE_CHROMIUM") ?? "/usr/bin/chromium";

try {
  await Deno.stat(SLIDE);
} catch {
  console.error(`Cannot take the screenshot: it needs ${SLIDE} (see ../shared/data/README.md)`);
  Deno.exit(1);
}
await buildWeb({ minify: true });
const tmp = await Deno.makeTempDir({ prefix: "he2gene-shot-" });
const weights = join(tmp, "tiny_random.safetensors");
await tinyCheckpoint(weights, {
  target: ["ERBB2", "FASN", "GNAS"],
  aux: ["ACTB", "GAPDH", "KRT19", "EPCAM", "PTPRC"],
});
const { server, url } = serveWeb({ port: 0, quiet: true });
const browser = await puppeteer.launch({
  executablePath: chromium,
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu"],
  defaultViewport: { width: 1080, height: 1000 },
  protocolTimeout: 900_000,
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e}`));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status")?.textContent?.startsWith("ready"));
  const input = await page.$("input#files");
  await input!.uploadFile(weights, SLIDE);
  await page.select("#tta", "single");
  await page.click("#predict");
  await page.waitForFunction(() => /done$|error:/.test(document.title), { timeout: 900_000, polling: 1000 });
  const title = await page.title();
  if (!title.endsWith("done")) throw new Error(`the page ended with "${title}"`);
  await page.evaluate(() => {
    const gene = document.getElementById("gene") as HTMLInputElement;
    gene.value = "ERBB2";
    gene.dispatchEvent(new Event("input"));
  });
  await page.screenshot({ path: out, fullPage: true });
  console.log(`${out}: ${await page.$eval("#log", (e) => e.textContent?.trim().split("\n").join("; "))}`);
} finally {
  await browser.close();
  await server.shutdown();
  await Deno.remove(tmp, { recursive: true });
}
