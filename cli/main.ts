/**
 * The he2gene command line: `deno task he2gene <command> [options]`.
 *
 * Exit codes: 0 ok, 1 bad input, 2 usage, 3 GPU / device failure.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { GPUFailure, NoAdapterError } from "../mod.ts";
import { runDemo } from "./demo.ts";
import { runInfo } from "./info.ts";

/** A usage error (exit code 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<void>;
}

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: "run the built-in demonstration on this machine's adapter",
    usage: "demo",
    run: async (args) => {
      parseArgs({ args, options: {}, strict: true, allowPositionals: false });
      await runDemo();
    },
  },
  info: {
    summary: "print the adapter, backend, limits and features",
    usage: "info [--json]",
    run: async (args) => {
      const { values } = parseArgs({
        args,
        options: { json: { type: "boolean", default: false } },
        strict: true,
      });
      await runInfo({ json: values.json ?? false });
    },
  },
  bench: {
    summary: "kernel benchmarks against tfjs-webgpu on the same adapter (see bench/main.ts)",
    usage: "bench [--json] [--quick] [--shapes NAME,…] [--no-peer]",
    run: async (args) => {
      const { main } = await import("../bench/main.ts");
      await main(args);
    },
  },
};

function help(): string {
  const lines = [
    "he2gene — HE2Gene (Chen et al., Bioinformatics 2024) on WebGPU",
    "",
    "Usage: deno task he2gene <command> [options]",
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`),
    "",
    "Environment: HE2GENE_BACKEND / DENO_WEBGPU_BACKEND = vulkan|gl|metal|dx12 picks the backend;",
    "             HE2GENE_TRACE=1 prints every GPU dispatch.",
    "Exit codes: 0 ok, 1 bad input, 2 usage, 3 GPU/device failure.",
  ];
  return lines.join("\n");
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
    console.error(`Unknown command "${name}".\n\n${help()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`Usage: deno task he2gene ${cmd.usage}\n\n${cmd.summary}`);
    return 0;
  }
  try {
    await cmd.run(rest);
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err instanceof UsageError || err.code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`Usage error: ${err.message}\nUsage: deno task he2gene ${cmd.usage}`);
      return 2;
    }
    if (err instanceof NoAdapterError || err instanceof GPUFailure) {
      console.error(err.message);
      return 3;
    }
    console.error(`Error: ${err.message}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await cli(Deno.args));
}
