/**
 * The bad-input corpus harness: run the CLI on one bad input and check the error contract —
 * the exit code, a message that names the file / option / tensor, and that the output folder holds
 * nothing new afterwards (no partial file, no empty folder the run created).
 *
 * `runCli` runs the command in this process (fast: one engine, no Deno start-up) with stdout/stderr
 * captured; `spawnCli` starts `deno run cli/main.ts` as the user does, for signals and real exit codes.
 */
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { cli } from "../../cli/main.ts";
import { assertEquals } from "../helpers.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** What one CLI run did. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `he2gene <args>` in this process, capturing what it prints. */
export async function runCli(args: string[]): Promise<CliRun> {
  const out: string[] = [], err: string[] = [];
  const { log, error, warn } = console;
  const fmt = (a: unknown[]) => a.map((x) => typeof x === "string" ? x : Deno.inspect(x)).join(" ");
  console.log = (...a: unknown[]) => out.push(fmt(a));
  console.error = (...a: unknown[]) => err.push(fmt(a));
  console.warn = (...a: unknown[]) => err.push(fmt(a));
  try {
    const code = await cli(args);
    return { code, stdout: out.join("\n"), stderr: err.join("\n") };
  } finally {
    Object.assign(console, { log, error, warn });
  }
}

/** Start `deno run … cli/main.ts <args>` (the task's permissions) as a child process. */
export function spawnCli(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", join(ROOT, "cli", "main.ts"), ...args],
    cwd: opts.cwd,
    env: { NO_COLOR: "1", ...opts.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Every path under `dir` (recursively, relative, folders with a trailing `/`) with size and mtime. */
export async function snapshot(dir: string): Promise<Map<string, string>> {
  const seen = new Map<string, string>();
  async function walk(d: string) {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(d));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      const st = await Deno.lstat(p);
      const rel = relative(dir, p) + (e.isDirectory ? "/" : "");
      seen.set(rel, e.isDirectory ? "dir" : `${st.size}:${st.mtime?.getTime()}`);
      if (e.isDirectory) await walk(p);
    }
  }
  await walk(dir);
  return seen;
}

/** Paths added or changed between two snapshots. */
export function changes(before: Map<string, string>, after: Map<string, string>): string[] {
  return [...after].filter(([k, v]) => before.get(k) !== v).map(([k]) => k).sort();
}

/** One bad-input case: what to run and what the contract says must happen. */
export interface BadCase {
  /** The CLI arguments (after `he2gene`). */
  args: string[];
  /** The expected exit code (1 bad input, 2 usage, 3 GPU). */
  code: number;
  /** Substrings the error message must contain (the file, option or tensor it names, the cause). */
  names: string[];
  /** Folder whose contents must not change (typically the run's parent of `--out`). */
  watch: string;
  /** Substrings the message must not contain (e.g. a misleading cause). */
  not?: string[];
}

/** Run a bad-input case in this process and check exit code, message and that `watch` holds nothing new. */
export async function expectRefused(c: BadCase): Promise<CliRun> {
  const before = await snapshot(c.watch);
  const r = await runCli(c.args);
  const what = `he2gene ${c.args.join(" ")}\n--- stderr ---\n${r.stderr}\n--- stdout ---\n${r.stdout}`;
  assertEquals(r.code, c.code, `exit code of ${what}`);
  for (const n of c.names) {
    if (!r.stderr.includes(n)) throw new Error(`the message does not name "${n}": ${what}`);
  }
  for (const n of c.not ?? []) {
    if (r.stderr.includes(n)) throw new Error(`the message says "${n}", which is not the cause: ${what}`);
  }
  if (/\n\s+at .*:\d+:\d+/.test(r.stderr)) throw new Error(`a stack trace reached the user: ${what}`);
  assertEquals(changes(before, await snapshot(c.watch)), [], `files left in ${c.watch} by ${what}`);
  return r;
}

/** A fresh temporary folder for one test. */
export function tempDir(prefix: string): Promise<string> {
  return Deno.makeTempDir({ prefix: `he2gene-bad-${prefix}-` });
}
