/**
 * The he2gene command line: `deno task he2gene <command> [options]`.
 *
 * Exit codes: 0 ok, 1 bad input, 2 usage, 3 GPU / device failure, 130 interrupted (Ctrl-C).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { GPUFailure, NoAdapterError } from "../mod.ts";
import { DEMO_USAGE, runDemoCli } from "./demo.ts";
import { runInfo, runSlideInfo } from "./info.ts";
import { Interrupted, requestInterrupt, resetInterrupt, UsageError } from "./errors.ts";
import { runConvert } from "./convert.ts";
import { runPredictPatches } from "./predict_patches.ts";
import { runEvaluate } from "./evaluate.ts";
import { runTrain, TRAIN_USAGE } from "./train.ts";
import { runExtractPatches } from "./extract_patches.ts";
import { PREDICT_SLIDE_USAGE, runPredictSlide } from "./predict_slide.ts";
import { runVisualize, VISUALIZE_USAGE } from "./visualize.ts";
import { runSelftestCli, SELFTEST_USAGE } from "./selftest.ts";
import { runTuneCli, TUNE_USAGE } from "./tune.ts";
import { runTruth, TRUTH_USAGE } from "./truth.ts";
import { EMBED_USAGE, runEmbed } from "./embed.ts";
import { backendEnvProblem } from "../engine/device.ts";

export { Interrupted, UsageError };

interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<void>;
  /**
   * The command stops cleanly on Ctrl-C: its long loops call `checkInterrupt()` (cli/errors.ts), so
   * `cli()` listens for SIGINT while it runs (see {@linkcode cli}).
   */
  interruptible?: boolean;
}

/**
 * The options of `deno task bench` and their types (bench/main.ts's `BENCH_OPTIONS`, which cli/ does not
 * import; tests/imports_test.ts checks that the two agree), so that `he2gene bench` answers a mistyped
 * option as every command does.
 */
export const BENCH_OPTION_TYPES: Readonly<Record<string, "boolean" | "string">> = {
  json: "boolean",
  quick: "boolean",
  shapes: "string",
  "no-peer": "boolean",
  "no-tfjs": "boolean",
  "no-torch": "boolean",
  reps: "string",
  suite: "string",
  data: "string",
  tune: "string",
  "resnet-batches": "string",
  "train-batches": "string",
  "peer-max-batch": "string",
  help: "boolean",
};

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: "the whole method on built-in synthetic data: train tiny HE2Gene-Spat, predict, gene maps",
    usage: DEMO_USAGE,
    run: (args) => runDemoCli(args),
  },
  info: {
    summary: "print the adapter, backend, limits and features; with SLIDE, its levels and µm per pixel",
    usage: "info [--json]\n" +
      "       info SLIDE [--mpp MPP] [--scalefactors FILE] [--json]\n\n" +
      "  SLIDE           SVS / TIFF / BigTIFF / JPEG / PNG: its levels (size, downsample, tile) and microns per\n" +
      "                  pixel (x, y) with their source, most trusted first: --mpp, the Aperio description's\n" +
      "                  MPP, TIFF XResolution / YResolution + ResolutionUnit, OME-XML PhysicalSizeX / Y, and\n" +
      "                  for Space Ranger's tissue_hires/lowres_image.png its scalefactors_json.json\n" +
      "  --scalefactors  that file when it is not beside the image",
    run: async (args) => {
      const { values, positionals } = parseArgs({
        args,
        options: {
          json: { type: "boolean", default: false },
          mpp: { type: "string" },
          scalefactors: { type: "string" },
        },
        allowPositionals: true,
        strict: true,
      });
      if (positionals.length > 1) throw new UsageError("expected at most one SLIDE");
      if (positionals.length === 0) {
        if (values.mpp !== undefined || values.scalefactors !== undefined) {
          throw new UsageError("--mpp and --scalefactors apply to info SLIDE");
        }
        return await runInfo({ json: values.json ?? false });
      }
      const mpp = values.mpp === undefined ? undefined : Number(values.mpp);
      if (mpp !== undefined && !(Number.isFinite(mpp) && mpp > 0)) {
        throw new UsageError(`--mpp must be a positive number, current value is ${values.mpp}`);
      }
      await runSlideInfo(positionals[0], {
        json: values.json ?? false,
        mpp,
        scalefactors: values.scalefactors,
      });
    },
  },
  selftest: {
    summary:
      "check every GPU kernel and variant, forward and backward, against its CPU reference (run first)",
    usage: SELFTEST_USAGE,
    run: (args) => runSelftestCli(args),
  },
  tune: {
    summary: "time every correct kernel variant on ResNet-50's shapes and store the fastest for this adapter",
    usage: TUNE_USAGE,
    run: (args) => runTuneCli(args),
  },
  "predict-patches": {
    interruptible: true,
    summary:
      "predict gene expression and tumour status for a folder of spot patches (HE2Gene's patch_pred.py)",
    usage:
      "predict-patches DIR --weights CKPT [--out ./output] [--batch-size 4] [--tta single|tta|grid|grid_tta]\n" +
      "       [--target-genes FILE] [--aux-genes FILE] [--compress] [--tune cached|auto|off] [--quiet]\n" +
      "       [--encoder-weights FILE]\n\n" +
      "  DIR             patches named {section}_{x}_{y}.{tif,png,jpg}\n" +
      "  --weights       model_base.pt / model_spat.pt (PyTorch state dict) or our .safetensors, or heads\n" +
      "                  trained by train --encoder (their encoder from the path recorded in them, or from\n" +
      "                  --encoder-weights FILE; its size and fingerprint must match)\n" +
      "  --out           output folder (default ./output): target_count_pred.csv, aux_count_pred.csv,\n" +
      "                  tumor_pred.csv, predictions.npz\n" +
      "  --h5ad          also predictions.h5ad (target genes) and predictions_aux.h5ad (aux genes) for scanpy:\n" +
      "                  X, obs tumor_prob / tumor, uns: what X is, the model, the TTA mode\n" +
      "  --batch-size    patches per GPU batch (default 4; × 8 views with tta)\n" +
      "  --tta           single | tta (8 symmetries, default) | grid (150/75/225 px crops) | grid_tta\n" +
      "  --target-genes  one gene name per line (default: the checkpoint's metadata, else target_0…)\n" +
      "  --aux-genes     likewise for the auxiliary head\n" +
      "  --compress      deflate predictions.npz's arrays (as np.savez_compressed; default stored, as np.savez)\n" +
      "  --tune          kernel variants: cached (this adapter's table from `he2gene tune` if there is one,\n" +
      "                  else built-in defaults; default) | auto (tune first when there is none) | off",
    run: (args) => runPredictPatches(args),
  },
  embed: {
    interruptible: true,
    summary:
      "image features of a folder of patches from an encoder (torchvision ResNet-50, HE2Gene's backbone)",
    usage: EMBED_USAGE,
    run: (args) => runEmbed(args),
  },
  "predict-slide": {
    interruptible: true,
    summary:
      "predict expression and tumour status from a whole slide, at spots or over tissue tiles (CSV, NPZ, h5ad)",
    usage: PREDICT_SLIDE_USAGE,
    run: (args) => runPredictSlide(args),
  },
  visualize: {
    interruptible: true,
    summary: "PNG gene maps of predictions over the slide, beside measured expression (Pearson r)",
    usage: VISUALIZE_USAGE,
    run: (args) => runVisualize(args),
  },
  "extract-patches": {
    interruptible: true,
    summary: "cut one {section}_{x}_{y}.tif patch per spot from a slide (the original's demo-patch format)",
    usage:
      "extract-patches SLIDE --spots FILE --out DIR [--section NAME] [--crop-size 150 | --crop-um UM]\n" +
      "       [--mpp MPP] [--scalefactors FILE] [--stain none|macenko|reinhard] [--stain-ref IMAGE] [--quiet]\n\n" +
      "  SLIDE        SVS / TIFF / BigTIFF / JPEG / PNG\n" +
      "  --spots      her2st *_selection.tsv, Visium tissue_positions(_list).csv, or CSV x,y,pixel_x,pixel_y\n" +
      "  --section    name prefix (default: the spot file's name up to the first _ or .)\n" +
      "  --crop-size  patch side in pixels (default 150; top-left = int(px) - 75 as the original)\n" +
      "  --crop-um    patch side in micrometres (needs the slide's resolution: see `info SLIDE`)\n" +
      "  --mpp        microns per pixel at level 0 (overrides the file's)\n" +
      "  --scalefactors  Space Ranger's scalefactors_json.json (default: the one beside the image): on\n" +
      "               tissue_hires/lowres_image.png, Visium positions × its scale factor, --crop-size in\n" +
      "               full-resolution px (150 → 7 px of a lowres image at scalef 0.045)\n" +
      "  --stain      stain normalisation on the GPU (default none); reinhard needs --stain-ref",
    run: (args) => runExtractPatches(args),
  },
  train: {
    summary: "train HE2Gene-Base or HE2Gene-Spat on her2st / HBCIS / Visium data (resumable)",
    usage: TRAIN_USAGE,
    run: (args) => runTrain(args),
  },
  truth: {
    interruptible: true,
    summary: "measured expression of a dataset's spots as the truth npz of evaluate / visualize (as train's)",
    usage: TRUTH_USAGE,
    run: (args) => runTruth(args),
  },
  evaluate: {
    interruptible: true,
    summary: "score predictions against measured expression: Pearson r, MSE beside the mean baseline's, " +
      "tumour AUC",
    usage:
      "evaluate PRED (--truth FILE.npz | --truth-csv FILE.csv [--truth-tumor FILE.csv]) [--genes FILE]\n" +
      "       [--top-k 50] [--log1p] [--out DIR] [--quiet]\n\n" +
      "  PRED          predictions.npz, target_count_pred.csv (aux/tumor CSVs beside it), or their folder\n" +
      "  --truth       npz: target or counts [P, G], names [P], genes [G], optional tumor [P] (he2gene truth\n" +
      "                writes one); spots joined on names {section}_{x}_{y}, her2st's {x}x{y} accepted\n" +
      "  --truth-csv   CSV as target_count_pred.csv; --truth-tumor: CSV with a True/False (or 0/1) column\n" +
      "  --genes       gene list: .txt one per line or .npy of strings (e.g. her_hvg_cut_1000.npy)\n" +
      "  --log1p       apply log(1 + x) to the truth (raw counts)\n" +
      "  --out         folder of metrics.json (default: the predictions' folder)\n\n" +
      "Prints Pearson r (mean, median, top-k, over --genes) and the MSE of the predictions and of the\n" +
      "mean-expression baseline (each gene's mean over the joined spots), with a legend of the columns.",
    run: (args) => runEvaluate(args),
  },
  convert: {
    interruptible: true,
    summary: "convert a PyTorch checkpoint (.pt state dict) to safetensors, with gene names in its metadata",
    usage: "convert IN.pt OUT.safetensors [--target-genes FILE] [--aux-genes FILE]",
    run: (args) => runConvert(args),
  },
  bench: {
    summary: "benchmarks (matmul, conv, ResNet-50, training, slide I/O): `deno task bench` in a checkout",
    usage:
      "bench [--suite matmul,conv,resnet,layers,train,slide,slide-predict,encoders] [--quick] [--reps N] [--no-peer]\n" +
      "       [--data DIR] [--json] … → run as `deno task bench …` in a checkout of he2gene\n\n" +
      "  The benchmarks are their own entry point (bench/main.ts), beside the command line and not inside\n" +
      "  it: they need the peer's npm packages (tfjs-webgpu) and python3, which the he2gene executable does\n" +
      "  not carry. `deno task bench --help` lists every option.",
    run: (args) => {
      // cli/ never imports bench/ (nor bench/ cli/): a mistyped option is answered as by every command,
      // then the user is sent to the task.
      parseArgs({
        args,
        options: Object.fromEntries(Object.entries(BENCH_OPTION_TYPES).map(([k, type]) => [k, { type }])),
        strict: true,
      });
      throw new UsageError(
        "the benchmarks are not part of the he2gene command: run `deno task bench` with these options in " +
          "a checkout (`deno task bench --help` lists them)",
      );
    },
  },
};

/** How the user runs us: `he2gene` from the executable of `deno task compile`, else the task. */
function prog(): string {
  const p = Deno.env.get("HE2GENE_PROG");
  if (p) return p;
  return Deno.mainModule.includes("deno-compile-") ? "he2gene" : "deno task he2gene";
}

function help(): string {
  const lines = [
    "he2gene — HE2Gene (Chen et al., Bioinformatics 2024) on WebGPU",
    "",
    `Usage: ${prog()} <command> [options]`,
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(16)} ${c.summary}`),
    "",
    "Environment: HE2GENE_BACKEND / DENO_WEBGPU_BACKEND = vulkan|gl|metal|dx12 picks the backend;",
    "             HE2GENE_TRACE=1 prints every GPU dispatch.",
    "Exit codes: 0 ok, 1 bad input, 2 usage, 3 GPU/device failure, 130 interrupted (Ctrl-C).",
  ];
  return lines.join("\n");
}

/** Edit distance, for "did you mean" suggestions. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

/** The closest of `options` to `word`, if it is close enough to be a typo. */
export function suggest(word: string, options: string[]): string | null {
  let best: string | null = null, bd = Infinity;
  for (const o of options) {
    const d = distance(word, o);
    if (d < bd) [best, bd] = [o, d];
  }
  return best !== null && bd <= Math.max(2, Math.floor(word.length / 3)) ? best : null;
}

/**
 * What a usage error prints: one line for an option `parseArgs` refused (an unknown option with the
 * closest known one, a value missing or given to a flag, an unexpected argument) and the hint to `--help`;
 * for the command's own checks, its message and the command's synopsis (the usage up to its first blank
 * line), not the whole help.
 */
export function usageMessage(name: string, cmd: { usage: string }, err: Error & { code?: string }): string {
  const helpHint = `(${prog()} ${name} --help lists the options)`;
  const quoted = /'([^']+)'/.exec(err.message)?.[1] ?? "";
  switch (err.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION": {
      const known = [...new Set(cmd.usage.match(/--[a-z0-9-]+/g) ?? [])];
      const s = suggest(quoted, known);
      return `Usage error: unknown option ${quoted}${s ? `; did you mean ${s}?` : ""} ${helpHint}`;
    }
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE": {
      const opt = quoted.split(" ")[0];
      return /does not take/.test(err.message)
        ? `Usage error: ${opt} is a flag and takes no value ${helpHint}`
        : `Usage error: ${opt} needs a value ${helpHint}`;
    }
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `Usage error: unexpected argument "${quoted}" ${helpHint}`;
  }
  const synopsis = cmd.usage.split("\n\n")[0];
  return `Usage error: ${err.message.replace(/\.$/, "")}.\nUsage: ${prog()} ${synopsis}\n${helpHint}`;
}

/**
 * Listen for SIGINT while an interruptible command runs: the first Ctrl-C asks it to stop
 * (`requestInterrupt`: its next `checkInterrupt()` throws `Interrupted`, the writers remove what they had
 * not finished, exit 130); a second one exits 130 at once. Returns the function that stops listening
 * (after which Deno's default applies again: the process ends by the signal).
 *
 * `train` is not interruptible here: it adds its own SIGINT listener around its epoch loop
 * (cli/train_loop.ts: finish the step, save a checkpoint, throw `Interrupted`). Deno calls every listener
 * of a signal, so if `train` is ever marked interruptible both run on one Ctrl-C — this one only sets the
 * flag that `checkInterrupt()` reads and the train loop does not call it, so nothing preempts its
 * checkpoint; only a second Ctrl-C (exit at once) would.
 */
function listenForCtrlC(): () => void {
  resetInterrupt();
  let count = 0;
  const onSigint = () => {
    if (++count === 1) {
      requestInterrupt();
      console.error("\nInterrupting: stopping at the next step (Ctrl-C again to quit at once)…");
    } else {
      Deno.exit(130);
    }
  };
  try {
    Deno.addSignalListener("SIGINT", onSigint);
  } catch {
    return () => {}; // no SIGINT here (the default applies)
  }
  return () => {
    try {
      Deno.removeSignalListener("SIGINT", onSigint);
    } catch { /* already gone */ }
  };
}

/** Run the CLI with `args`; returns the exit code. */
export async function cli(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(help());
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    const s = suggest(name, Object.keys(COMMANDS));
    console.error(
      `Usage error: unknown command "${name}"${s ? `; did you mean "${s}"?` : ""} ` +
        `(${prog()} --help lists the commands)`,
    );
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`Usage: ${prog()} ${cmd.usage}\n\n${cmd.summary}`);
    return 0;
  }
  const backend = backendEnvProblem();
  if (backend) {
    console.error(`Usage error: ${backend}`);
    return 2;
  }
  const stopListening = cmd.interruptible ? listenForCtrlC() : () => {};
  try {
    await cmd.run(rest);
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err instanceof UsageError || err.code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(usageMessage(name, cmd, err));
      return 2;
    }
    if (err instanceof Interrupted) {
      console.error(`Interrupted: ${err.message}`);
      return 130;
    }
    if (err instanceof NoAdapterError || err instanceof GPUFailure) {
      console.error(err.message);
      return 3;
    }
    console.error(`Error: ${err.message}`);
    return 1;
  } finally {
    stopListening();
  }
}

if (import.meta.main) {
  Deno.exit(await cli(Deno.args));
}
