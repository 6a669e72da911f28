/**
 * `deno task compile`: the executable it builds (by `deno compile` where Deno's runtime can be downloaded,
 * else the self-extracting one) runs `--help`, `info` and `predict-patches`, gives the same predictions as
 * the library in this process, exits with the CLI's codes, and unpacks once.
 */
import { join } from "node:path";
import { buildExecutable, packHeader, PERMISSIONS, runtimeUnavailable } from "../../tools/compile.ts";
import { predictPatches, writeOutputs } from "../../cli/predict_patches.ts";
import { saveModel } from "../../cli/checkpoint.ts";
import { HE2Gene, TINY } from "../../model/mod.ts";
import { encodePng } from "../../slide/png.ts";
import { assertEquals, gpuTest, rand } from "../helpers.ts";

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function exec(bin: string, args: string[], env: Record<string, string>): Promise<Result> {
  const r = await new Deno.Command(bin, { args, env, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

function assertOk(r: Result, what: string): void {
  if (r.code !== 0) throw new Error(`${what} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
}

Deno.test("a failed denort download is told apart from other deno compile failures", () => {
  // The message deno 2.9.6 prints where dl.deno.land cannot be reached.
  const offline = "error: Writing deno compile executable to temporary file '/tmp/x.tmp-1'\n\nCaused by:\n" +
    "    0: Setting up base binary.\n    1: error sending request for url " +
    "(https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): client error (Connect)";
  assertEquals(runtimeUnavailable(offline), true);
  assertEquals(runtimeUnavailable('error: Module not found "file:///x/cli/main.ts".'), false);
});

Deno.test("the self-extracting header asks for read, write and env only and points past itself", () => {
  const h = packHeader({
    hash: "0123456789abcdef",
    denoAt: 1000,
    denoLen: 50,
    jsAt: 1050,
    jsLen: 7,
    denoVersion: "2.9.6",
    target: "x86_64-unknown-linux-gnu",
  });
  assertEquals(h.startsWith("#!/bin/sh\n"), true);
  const run = h.slice(h.indexOf("exec "));
  assertEquals(run.match(/--allow-[a-z]+/g), [...PERMISSIONS]);
  assertEquals(/--allow-(net|run|ffi|sys|all)|-A\b/.test(h), false);
  // tail -c +N counts from 1.
  assertEquals(h.includes('tail -c +1001 "$0" | head -c 50'), true);
  assertEquals(h.includes('tail -c +1051 "$0" | head -c 7'), true);
});

gpuTest("deno task compile builds one executable that runs info and predict-patches", async (e) => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-compile-" });
  try {
    const bin = join(dir, "he2gene");
    const log: string[] = [];
    const how = await buildExecutable({ output: bin, log: (s) => log.push(s) });
    console.log(`built by ${how === "deno" ? "deno compile" : "the self-extracting fallback"}`);
    assertEquals((await Deno.stat(bin)).mode! & 0o111, 0o111);
    // No temporary file is left beside it.
    const left = [];
    for await (const f of Deno.readDir(dir)) left.push(f.name);
    assertEquals(left, ["he2gene"]);

    const cache = join(dir, "cache");
    const env = { HE2GENE_CACHE: cache, NO_COLOR: "1" };

    const help = await exec(bin, ["--help"], env);
    assertOk(help, "he2gene --help");
    for (const c of ["predict-patches", "predict-slide", "visualize", "train", "evaluate", "info"]) {
      assertEquals(help.stdout.includes(`  ${c} `), true, `--help lists ${c}`);
    }
    assertEquals(help.stdout.includes("Usage: he2gene <command>"), true);

    const info = await exec(bin, ["info", "--json"], env);
    assertOk(info, "he2gene info --json");
    const j = JSON.parse(info.stdout);
    assertEquals(typeof j.adapter.name, "string");
    assertEquals(j.limits.maxStorageBufferBindingSize > 0, true);

    // The CLI's exit codes: usage 2, bad input 1.
    assertEquals((await exec(bin, ["predict-patchs"], env)).code, 2);
    const noDir = await exec(bin, ["predict-patches", join(dir, "absent"), "--weights", "x"], env);
    assertEquals(noDir.code, 1);
    assertEquals(noDir.stderr.includes("Cannot read the patch folder"), true);

    // predict-patches through the executable equals the library run here.
    const model = HE2Gene.init(e, { backbone: TINY, variant: "base", targetGenes: 3, auxGenes: 5 }, 7);
    const weights = join(dir, "tiny.safetensors");
    await saveModel(model, weights, { targetGenes: ["G1", "G2", "G3"], auxGenes: ["a", "b", "c", "d", "e"] });
    model.dispose();
    const patches = join(dir, "patches");
    await Deno.mkdir(patches);
    for (const [k, name] of ["S1_3_4", "S1_5_6", "S2_1_1"].entries()) {
      const px = Uint8Array.from(rand(150 * 150 * 3, 11 + k, 0, 256), (v) => Math.floor(v));
      await Deno.writeFile(join(patches, `${name}.png`), encodePng(150, 150, px));
    }
    const outBin = join(dir, "out-bin");
    const r = await exec(bin, [
      "predict-patches",
      patches,
      "--weights",
      weights,
      "--out",
      outBin,
      "--tta",
      "single",
      "--quiet",
    ], env);
    assertOk(r, "he2gene predict-patches");
    const here = join(dir, "out-here");
    const p = await predictPatches(patches, {
      weights,
      out: here,
      batchSize: 4,
      tta: "single",
      quiet: true,
      engine: e,
    });
    await writeOutputs(here, p);
    for (const f of ["target_count_pred.csv", "aux_count_pred.csv", "tumor_pred.csv"]) {
      const got = await Deno.readTextFile(join(outBin, f));
      assertEquals(got, await Deno.readTextFile(join(here, f)), f);
    }
    assertEquals(
      (await Deno.readTextFile(join(outBin, "target_count_pred.csv"))).split("\n")[0].includes("G2"),
      true,
    );

    if (how === "pack") {
      // Unpacked once, into one complete folder named by the payload's hash.
      const dirs = [];
      for await (const f of Deno.readDir(cache)) dirs.push(f.name);
      assertEquals(dirs.length, 1);
      assertEquals((await Deno.stat(join(cache, dirs[0], "complete"))).isFile, true);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
