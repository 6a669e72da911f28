/**
 * The command line's rough edges: an unknown option is one line naming the closest known one (edit
 * distance) for every command, not the whole help; a missing input is named with its option before any
 * work; `HE2GENE_BACKEND=bogus` is a usage error listing the valid backends; progress rates carry their
 * unit; the example output folders are git-ignored.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { suggest } from "../../cli/main.ts";
import { Progress } from "../../cli/progress.ts";
import { backendEnvProblem } from "../../engine/device.ts";
import { expectRefused, runCli, tempDir } from "../bad_inputs/harness.ts";
import { assertEquals, tinyCheckpoint } from "../helpers.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The commands `he2gene --help` lists. */
async function commands(): Promise<string[]> {
  const help = (await runCli(["--help"])).stdout;
  const list = help.slice(help.indexOf("Commands:"), help.indexOf("Environment:"));
  return [...list.matchAll(/^ {2}([a-z-]+) /gm)].map((m) => m[1]);
}

Deno.test("every command answers an unknown option with one line, not its whole help", async () => {
  const names = await commands();
  assertEquals(names.length >= 13 && names.includes("truth") && names.includes("demo"), true, names.join());
  for (const name of names) {
    const r = await runCli([name, "--no-such-option"]);
    const what = `${name}: ${r.stderr}`;
    assertEquals(r.code, 2, what);
    assertEquals(r.stderr.trim().split("\n").length, 1, what);
    assertEquals(r.stderr.includes("unknown option --no-such-option"), true, what);
    assertEquals(r.stderr.includes(`${name} --help lists the options`), true, what);
    assertEquals(r.stderr.includes("Usage:"), false, what);
  }
});

Deno.test("an unknown option names the closest known one", async () => {
  const cases: [string[], string][] = [
    [["predict-patches", "p", "--batchsize", "3"], "unknown option --batchsize; did you mean --batch-size?"],
    [["predict-slide", "s.svs", "--tilepx", "64"], "unknown option --tilepx; did you mean --tile-px?"],
    [["evaluate", "p", "--topk", "5"], "unknown option --topk; did you mean --top-k?"],
    [["visualize", "p", "--genes", "FASN"], "unknown option --genes; did you mean --gene?"],
    [["train", "--epoch", "3"], "unknown option --epoch; did you mean --epochs?"],
    [["truth", "--section", "C2"], "unknown option --section; did you mean --sections?"],
    [["demo", "--ouput", "x"], "unknown option --ouput; did you mean --out?"],
    [["selftest", "--quik"], "unknown option --quik; did you mean --quick?"],
  ];
  for (const [args, line] of cases) {
    const r = await runCli(args);
    assertEquals([r.code, r.stderr.split("\n")[0].startsWith(`Usage error: ${line} (`)], [2, true], r.stderr);
  }
  assertEquals(suggest("--learning-rate", ["--lr", "--batch-size"]), null, "no suggestion far from all");
});

Deno.test("other parse errors are one line too; a command's own check shows its synopsis only", async () => {
  for (
    const [args, text] of [
      [["info", "--json=yes"], "--json is a flag and takes no value"],
      [["visualize", "p", "--gene"], "--gene needs a value"],
      [["tune", "extra"], 'unexpected argument "extra"'],
      [["info", "a", "b"], "expected at most one SLIDE"],
      [["demo", "--epochs", "0"], "--epochs must be a positive integer, current value is 0"],
      [["selftest", "--jobs", "0"], "--jobs must be an integer ≥ 1, current value is 0"],
    ] as [string[], string][]
  ) {
    const r = await runCli(args);
    assertEquals(r.code, 2, r.stderr);
    assertEquals(r.stderr.includes(text), true, r.stderr);
  }
  const r = await runCli(["predict-patches", "p"]);
  const lines = r.stderr.split("\n");
  assertEquals(
    lines[0],
    "Usage error: --weights CKPT is required (model_base.pt, model_spat.pt or .safetensors).",
  );
  assertEquals(lines[1].includes("predict-patches DIR --weights CKPT"), true, r.stderr);
  assertEquals(r.stderr.includes("--aux-genes     likewise"), false, "not the option list");
  const unknown = await runCli(["evalute"]);
  assertEquals(unknown.code, 2);
  assertEquals(unknown.stderr.split("\n").length, 1, unknown.stderr);
  assertEquals(unknown.stderr.includes('unknown command "evalute"; did you mean "evaluate"?'), true);
});

Deno.test("a missing input is named with its option, in one line, before any work", async () => {
  const dir = await tempDir("inputs");
  try {
    const ckpt = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const nope = join(dir, "nope");
    const spots = join(dir, "S_selection.tsv");
    await Deno.writeTextFile(
      spots,
      "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n1\t1\t1\t1\t10\t10\t1\n",
    );
    const out = join(dir, "out");
    const cases: [string[], string][] = [
      [
        ["predict-patches", dir, "--weights", `${nope}.pt`, "--out", out],
        `Cannot read --weights ${nope}.pt: no such file`,
      ],
      [
        ["predict-patches", nope, "--weights", ckpt, "--out", out],
        `Cannot read the patch folder ${nope}: no such folder`,
      ],
      [
        ["predict-patches", dir, "--weights", ckpt, "--target-genes", nope, "--out", out],
        `--target-genes ${nope}`,
      ],
      [
        ["predict-slide", nope, "--weights", ckpt, "--tile", "--out", out],
        `Cannot read the slide ${nope}: no such file`,
      ],
      [
        ["predict-slide", spots, "--weights", ckpt, "--spots", nope, "--out", out],
        `Cannot read --spots ${nope}`,
      ],
      [
        [
          "extract-patches",
          spots,
          "--spots",
          spots,
          "--out",
          out,
          "--stain",
          "reinhard",
          "--stain-ref",
          nope,
        ],
        `--stain-ref ${nope}`,
      ],
      [
        ["convert", `${nope}.pt`, join(dir, "m.safetensors")],
        `Cannot read the checkpoint ${nope}.pt: no such file`,
      ],
      [["evaluate", dir, "--truth", nope], `Cannot read --truth ${nope}: no such file`],
      [["visualize", nope, "--gene", "FASN"], `Cannot read the predictions ${nope}: no such file or folder`],
      [["visualize", dir, "--gene", "FASN", "--slide", nope], `Cannot read --slide ${nope}`],
      [["truth", "--dataset", "her2st", "--root", nope], `Cannot read --root ${nope}: no such folder`],
    ];
    for (const [args, text] of cases) {
      const r = await expectRefused({ args, code: 1, names: [text], watch: dir });
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      // Before any work: no GPU engine, no tuning table, no slide read.
      assertEquals(r.stderr.includes("kernel variants"), false, r.stderr);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HE2GENE_BACKEND=bogus is a usage error that lists the valid backends", async () => {
  const saved = Deno.env.get("HE2GENE_BACKEND");
  try {
    Deno.env.set("HE2GENE_BACKEND", "bogus");
    const r = await runCli(["info"]);
    assertEquals(r.code, 2, r.stderr);
    assertEquals(
      r.stderr,
      "Usage error: HE2GENE_BACKEND=bogus is not a valid backend: valid values are vulkan, gl, metal, dx12",
    );
    for (const ok of ["vulkan", "GL", "vk,gl"]) {
      Deno.env.set("HE2GENE_BACKEND", ok);
      assertEquals(backendEnvProblem(), null, ok);
    }
  } finally {
    if (saved === undefined) Deno.env.delete("HE2GENE_BACKEND");
    else Deno.env.set("HE2GENE_BACKEND", saved);
  }
});

Deno.test("progress rates carry their unit: spots/s, batches/s", () => {
  const lines: string[] = [];
  const { error } = console;
  console.error = (s: string) => lines.push(s);
  try {
    const spots = new Progress("spots", 4);
    spots.tick(4);
    const batches = new Progress("epoch 1/3", 2, false, "batches");
    batches.tick(2);
    new Progress("epoch 2/3", 1).tick(1);
  } finally {
    console.error = error;
  }
  if (Deno.stderr.isTerminal()) return; // the bar is redrawn in place on a terminal, not through console
  assertEquals(/spots 4\/4 \(100%\), [\d.]+ spots\/s,/.test(lines[0]), true, lines[0]);
  assertEquals(/epoch 1\/3 2\/2 \(100%\), [\d.]+ batches\/s,/.test(lines[1]), true, lines[1]);
  assertEquals(/[\d.]+ items\/s,/.test(lines[2]), true, lines[2]);
});

Deno.test("the example output folders (runs/, patches/, output/) are git-ignored", async () => {
  const ignored = (await Deno.readTextFile(join(ROOT, ".gitignore"))).split("\n").map((l) => l.trim());
  for (const d of ["/runs/", "/patches/", "/output/"]) assertEquals(ignored.includes(d), true, d);
});
