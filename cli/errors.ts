/**
 * CLI error kinds and their exit codes: 1 bad input, 2 usage, 3 GPU / device failure, 130 interrupted.
 *
 * Ctrl-C: while a command that stops cleanly runs, `cli()` (cli/main.ts) listens for SIGINT and the first
 * one calls {@linkcode requestInterrupt}; the command's long loops call {@linkcode checkInterrupt}, which
 * then throws {@linkcode Interrupted}, so the atomic writers remove what they had not finished and the exit
 * code is 130. A second Ctrl-C exits at once.
 *
 * @module
 */

/** A usage error (exit code 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * The user interrupted the command (Ctrl-C / SIGINT): exit code 130, as a shell reports a process killed
 * by SIGINT. Thrown after the command has saved what it can (train: a checkpoint) and removed what it
 * had not finished writing.
 */
export class Interrupted extends Error {
  constructor(message = "interrupted") {
    super(message);
    this.name = "Interrupted";
  }
}

let interrupt = new AbortController();

/** Ask the running command to stop (the first Ctrl-C): the next {@linkcode checkInterrupt} throws. */
export function requestInterrupt(): void {
  if (!interrupt.signal.aborted) {
    interrupt.abort(new Interrupted("Ctrl-C; nothing was written (outputs are written only when complete)"));
  }
}

/** Forget an earlier request (`cli()` calls this before each command). */
export function resetInterrupt(): void {
  interrupt = new AbortController();
}

/** Whether Ctrl-C was pressed since the command started. */
export function interruptRequested(): boolean {
  return interrupt.signal.aborted;
}

/** The request as an `AbortSignal` (aborted with an {@linkcode Interrupted} reason), for APIs that take one. */
export function interruptSignal(): AbortSignal {
  return interrupt.signal;
}

/** Throw {@linkcode Interrupted} if Ctrl-C was pressed: call it in every long loop and before committing. */
export function checkInterrupt(): void {
  interrupt.signal.throwIfAborted();
}

/**
 * Why `name` cannot be used as one file name inside an output folder, or null when it can: it is empty,
 * holds a path separator (`/`, `\`), is or holds `..`, or holds a control character — each of which would
 * write outside the folder or make a name the other commands read back differently.
 */
export function unsafeFileNamePart(name: string): string | null {
  if (name.length === 0) return "it is empty";
  if (/[/\\]/.test(name)) return "it holds a path separator";
  if (name === ".") return 'it is "."';
  if (name.includes("..")) return 'it holds ".."';
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return "it holds a control character";
  return null;
}

/** What an input path must be: a file, a folder, or either (a file or the folder holding it). */
export type InputKind = "file" | "folder" | "file or folder";

/**
 * Check that each given input exists and is of its kind, before any work (the engine, a tuning pass, a
 * dataset read): the first that is not throws one line naming the option and the path, e.g.
 * `Cannot read --weights model.pt: no such file` (exit 1). Absent options (`undefined`) are skipped.
 *
 * @example
 * ```ts ignore
 * await checkInputs([["DIR", dir, "folder"], ["--weights", weights, "file"]]);
 * ```
 */
export async function checkInputs(inputs: [option: string, path: string | undefined, kind: InputKind][]) {
  for (const [option, path, kind] of inputs) {
    if (path === undefined) continue;
    let why: string | null = null;
    try {
      const st = await Deno.stat(path);
      if (kind === "file" && st.isDirectory) why = "it is a folder, not a file";
      else if (kind === "folder" && !st.isDirectory) why = "it is not a folder";
    } catch (e) {
      why = e instanceof Deno.errors.NotFound
        ? `no such ${kind === "folder" ? "folder" : kind === "file" ? "file" : "file or folder"}`
        : (e as Error).message;
    }
    if (why) throw new Error(`Cannot read ${option} ${path}: ${why}`);
  }
}
