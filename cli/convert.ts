/**
 * `he2gene convert model_base.pt out.safetensors [--target-genes FILE] [--aux-genes FILE]`: a PyTorch
 * checkpoint (zip or legacy `torch.save` of a state dict) to safetensors. Every tensor is kept as is
 * (dtype, shape, bytes); gene names, one per line, go into `__metadata__` as JSON strings
 * (`target_genes`, `aux_genes`), next to `format: "pt"`, the source file name and a `config` JSON with
 * the head sizes found. Refused: an output that is one of the inputs (same path, or the same file through
 * a symbolic or hard link; exit 2), and a checkpoint whose float tensors hold NaN or Inf (exit 1, naming the
 * tensors: a converted checkpoint with them would be useless). The output is written under a temporary name
 * in its folder, then renamed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename } from "node:path";
import {
  assertFinite,
  CheckpointError,
  isFloat,
  numel,
  readTorch,
  type TensorEntry,
  writeSafetensors,
} from "../weights/mod.ts";
import { readGeneList } from "../slide/genes.ts";
import { checkInputs, checkInterrupt, UsageError } from "./errors.ts";

/** Head names of the two HE2Gene code bases: (target, auxiliary, tumour). */
const HEADS = [["fc1", "fc2", "fc3"], ["fc", "fc_aux", "fc_tmr"]] as const;

/** What {@linkcode convertCheckpoint} did, for the summary. */
export interface ConvertSummary {
  tensors: number;
  /** Elements of floating-point tensors (weights, biases, BN statistics). */
  parameters: number;
  /** Elements of integer tensors (e.g. `num_batches_tracked`). */
  integerElements: number;
  /** `prefix.*` → tensor count, in first-seen order (`base_model.*`, `fc1.*`, …). */
  prefixes: Map<string, number>;
  dtypes: Map<string, number>;
  format: "zip" | "legacy";
  wrapper: string | null;
  skipped: string[];
  metadata: Record<string, string>;
}

/** Options of {@linkcode convertCheckpoint}: gene-name files (one name per line). */
export interface ConvertOptions {
  targetGenes?: string;
  auxGenes?: string;
}

/** The head (`fc1.weight` or `fc.weight`, …) present in the state dict, if any. */
function head(tensors: Map<string, TensorEntry>, which: 0 | 1 | 2): { name: string; rows: number } | null {
  for (const names of HEADS) {
    const w = tensors.get(`${names[which]}.weight`);
    if (w && w.shape.length === 2) return { name: names[which], rows: w.shape[0] };
  }
  return null;
}

/**
 * Refuse an `output` that is one of the `inputs` (`[what, path]`): the same path in any spelling, or the
 * same file through a symbolic or hard link (real paths, then device + inode). A missing output is fine.
 */
async function refuseOverwrite(output: string, inputs: [string, string | undefined][]): Promise<void> {
  let out: Deno.FileInfo;
  try {
    out = await Deno.stat(output);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw new Error(`Cannot write the output ${output}: ${(e as Error).message}`);
  }
  if (out.isDirectory) {
    throw new UsageError(
      `the output ${output} is a folder; give a file name, e.g. ${output}/model.safetensors`,
    );
  }
  const outReal = await Deno.realPath(output);
  for (const [what, path] of inputs) {
    if (path === undefined) continue;
    let st: Deno.FileInfo, real: string;
    try {
      st = await Deno.stat(path);
      real = await Deno.realPath(path);
    } catch {
      continue; // a missing input is reported by its reader
    }
    const linked = st.ino !== null && st.dev === out.dev && st.ino === out.ino;
    if (real === outReal || linked) {
      const how = real !== outReal ? " (a hard link to it)" : output !== path ? ` (both are ${real})` : "";
      throw new UsageError(
        `the output ${output} is the ${what} ${path}${how}: converting would overwrite it; ` +
          `choose another output path`,
      );
    }
  }
}

/**
 * Convert `input` (a `.pt` state dict) to a safetensors file at `output`. Refused: an output that is an
 * input file (same path or the same file through a link), and tensors holding NaN or Inf (a converted
 * checkpoint with them is useless), naming the tensors. The output is written under a temporary name in
 * its folder, then renamed.
 *
 * @example
 * ```ts ignore
 * import { convertCheckpoint } from "./convert.ts";
 * const s = await convertCheckpoint("model_base.pt", "model_base.safetensors", { targetGenes: "genes.txt" });
 * console.log(s.tensors, s.parameters);
 * ```
 */
export async function convertCheckpoint(
  input: string,
  output: string,
  options: ConvertOptions = {},
): Promise<ConvertSummary> {
  await refuseOverwrite(output, [
    ["input", input],
    ["--target-genes file", options.targetGenes],
    ["--aux-genes file", options.auxGenes],
  ]);
  const ckpt = await readTorch(input);
  const { tensors } = ckpt;
  assertFinite(tensors, input);
  const metadata: Record<string, string> = { format: "pt", source: basename(input) };
  const config: Record<string, unknown> = {};
  const genes = [[options.targetGenes, 0, "target_genes", "target"], [
    options.auxGenes,
    1,
    "aux_genes",
    "aux",
  ]] as const;
  for (const [file, which, key, what] of genes) {
    const h = head(tensors, which);
    if (h) config[`${what}_head`] = { name: h.name, outputs: h.rows };
    if (!file) continue;
    const names = await readGeneList(file, `--${key.replace("_", "-")}`);
    if (h && h.rows !== names.length) {
      throw new CheckpointError(
        file,
        -1,
        `expected ${h.rows} ${what} gene names (the rows of ${h.name}.weight in ${input}), found ${names.length}`,
      );
    }
    metadata[key] = JSON.stringify(names);
  }
  const tumour = head(tensors, 2);
  if (tumour) config.tumour_head = { name: tumour.name, outputs: tumour.rows };
  if (Object.keys(config).length) metadata.config = JSON.stringify(config);

  checkInterrupt(); // Ctrl-C while reading: write nothing
  await writeSafetensors(output, tensors, { metadata });

  const prefixes = new Map<string, number>(), dtypes = new Map<string, number>();
  let parameters = 0, integerElements = 0;
  for (const [k, t] of tensors) {
    const dot = k.indexOf(".");
    const p = dot < 0 ? k : `${k.slice(0, dot)}.*`;
    prefixes.set(p, (prefixes.get(p) ?? 0) + 1);
    dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + 1);
    if (isFloat(t.dtype)) parameters += numel(t.shape);
    else integerElements += numel(t.shape);
  }
  return {
    tensors: tensors.size,
    parameters,
    integerElements,
    prefixes,
    dtypes,
    format: ckpt.format,
    wrapper: ckpt.wrapper,
    skipped: ckpt.skipped,
    metadata,
  };
}

/** The summary as printed by `he2gene convert`. */
export function formatSummary(input: string, output: string, s: ConvertSummary): string {
  const list = (m: Map<string, number>) => [...m].map(([k, n]) => `${k} (${n})`).join(", ");
  const lines = [
    `${input} (${s.format} format${s.wrapper ? `, state dict under "${s.wrapper}"` : ""}) → ${output}`,
    `tensors:    ${s.tensors} (${list(s.dtypes)})`,
    `parameters: ${s.parameters.toLocaleString("en-US")} floating-point values` +
    (s.integerElements ? ` + ${s.integerElements} integer values` : ""),
    `prefixes:   ${list(s.prefixes)}`,
  ];
  if (s.skipped.length) lines.push(`skipped:    ${s.skipped.join(", ")} (not tensors)`);
  for (const key of ["target_genes", "aux_genes"]) {
    if (s.metadata[key]) lines.push(`${key}: ${JSON.parse(s.metadata[key]).length} names stored in metadata`);
  }
  return lines.join("\n");
}

/** `he2gene convert IN.pt OUT.safetensors [--target-genes FILE] [--aux-genes FILE]`. */
export async function runConvert(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { "target-genes": { type: "string" }, "aux-genes": { type: "string" } },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length !== 2) {
    throw new UsageError(`expected an input .pt and an output .safetensors, got ${positionals.length} paths`);
  }
  const [input, output] = positionals;
  await checkInputs([
    ["the checkpoint", input, "file"],
    ["--target-genes", values["target-genes"], "file"],
    ["--aux-genes", values["aux-genes"], "file"],
  ]);
  const summary = await convertCheckpoint(input, output, {
    targetGenes: values["target-genes"],
    auxGenes: values["aux-genes"],
  });
  console.log(formatSummary(input, output, summary));
}
