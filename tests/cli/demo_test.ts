/**
 * `he2gene demo`: a fixed number of epochs, so two runs give the same figures and the same PNG whatever the
 * machine's speed; `--out`; the files it says it wrote are the files in the folder; an ETA after each epoch.
 */
import { join } from "node:path";
import { demoFiles, runDemo } from "../../cli/demo.ts";
import { assertEquals } from "../helpers.ts";

Deno.test({
  name: "two demo runs of the same epochs write the same predictions and gene maps into --out",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-demo-" });
    const said: string[] = [];
    const { log, error } = console;
    try {
      console.log = (s: string) => said.push(s);
      console.error = (s: string) => said.push(s);
      const a = await runDemo({ out: join(dir, "a"), epochs: 2 });
      console.log = log;
      console.error = error;
      const b = await runDemo({ out: join(dir, "b"), epochs: 2, quiet: true });
      assertEquals(b, a);
      const files = demoFiles("SYN011");
      for (const run of ["a", "b"]) {
        const found = [...Deno.readDirSync(join(dir, run))].map((e) => e.name).sort();
        assertEquals(found, [...files].sort(), run);
      }
      for (
        const f of ["predictions.npz", "gene_map_SYN011.png", "gene_map_SYN011_truth.png", "best.safetensors"]
      ) {
        assertEquals(await Deno.readFile(join(dir, "b", f)), await Deno.readFile(join(dir, "a", f)), f);
      }
      const strip = (s: string) => s.split("\n").map((l) => l.replace(/,"seconds":[\d.e+-]+/, "")).join("\n");
      assertEquals(
        strip(await Deno.readTextFile(join(dir, "b", "log.jsonl"))),
        strip(await Deno.readTextFile(join(dir, "a", "log.jsonl"))),
      );
      // An ETA for the rest of the run after the first epoch, the file list after the figures.
      const text = said.join("\n");
      assertEquals(/demo: epoch 1\/2 done, \S+ so far; ETA \S+/.test(text), true, text);
      assertEquals(text.includes(`files in ${join(dir, "a")}/: ${files.join(", ")}`), true, text);
      assertEquals(text.includes("budget"), false, text);
    } finally {
      console.log = log;
      console.error = error;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
