/**
 * `deno task compile`: one `he2gene` executable that runs every command with read, write and environment
 * permissions only (no network, no subprocesses, no FFI).
 *
 * First choice is `deno compile`. It needs Deno's runtime binary (denort), which it downloads from
 * dl.deno.land unless `DENORT_BIN` names a local copy. Where that download fails (closed networks, as on
 * many hospital and lab machines), the task says so and builds a self-extracting executable instead: a
 * POSIX `sh` header, then the gzipped Deno binary that runs this script and the whole program bundled into
 * one JavaScript file by `deno bundle`. On its first run the header unpacks both into a cache folder named
 * by their hash (into a temporary folder, then renamed, so a half-unpacked copy is never used); every run
 * then `exec`s that Deno with the same permissions as `deno compile`'s binary. Linux and macOS only; on
 * Windows use `deno compile`.
 *
 * Usage: `deno task compile [--output he2gene] [--mode auto|deno|pack]`
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname, join, resolve } from "node:path";

/** The permissions the executable runs with, whichever way it was built. */
export const PERMISSIONS: readonly string[] = ["--allow-read", "--allow-write", "--allow-env"];

const ENTRY = new URL("../cli/main.ts", import.meta.url).pathname;
/** `selftest --jobs`'s Worker module, which `deno compile` includes only when named (the bundled
 * self-extracting program has no separate module: its selftest runs on one device). */
const WORKER = new URL("../cli/selftest_worker.ts", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** How the executable was built. */
export type BuildMode = "deno" | "pack";

/** Options of {@linkcode buildExecutable}. */
export interface BuildOptions {
  /** Output path of the executable. */
  output: string;
  /** `auto` (default): `deno compile`, else the self-extracting pack when Deno's runtime can't be had. */
  mode?: "auto" | BuildMode;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

interface Ran {
  ok: boolean;
  stderr: string;
}

async function deno(args: string[]): Promise<Ran> {
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "inherit",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { ok: r.success, stderr: new TextDecoder().decode(r.stderr) };
}

/** True when `deno compile` failed only because it could not obtain its runtime binary (denort). */
export function runtimeUnavailable(stderr: string): boolean {
  return /Setting up base binary|denort|dl\.deno\.land/i.test(stderr);
}

/**
 * The `sh` header of the self-extracting executable. `denoAt`/`denoLen` and `jsAt`/`jsLen` are byte
 * offsets (from 0) and lengths of the gzipped Deno binary and program in the file.
 */
export function packHeader(o: {
  hash: string;
  denoAt: number;
  denoLen: number;
  jsAt: number;
  jsLen: number;
  denoVersion: string;
  target: string;
}): string {
  return `#!/bin/sh
# he2gene: self-extracting executable built by \`deno task compile\` (Deno ${o.denoVersion}, ${o.target}).
# It holds the Deno binary and the whole program (one JavaScript file); the first run unpacks them into
# \${HE2GENE_CACHE:-\${XDG_CACHE_HOME:-$HOME/.cache}/he2gene}/${o.hash} (\${TMPDIR:-/tmp}/he2gene-UID when
# that cannot be written) and every run executes
#   deno run ${PERMISSIONS.join(" ")} he2gene.js ARGS
# (no network, no subprocesses). Usage: he2gene --help
set -e
c="\${HE2GENE_CACHE:-\${XDG_CACHE_HOME:-$HOME/.cache}/he2gene}"
d="$c/${o.hash}"
if [ ! -f "$d/complete" ] || [ ! -x "$d/deno" ]; then
  if ! mkdir -p "$c" 2>/dev/null || [ ! -w "$c" ]; then
    c="\${TMPDIR:-/tmp}/he2gene-$(id -u)"
    d="$c/${o.hash}"
    mkdir -p -m 700 "$c"
    if [ ! -O "$c" ]; then echo "he2gene: $c belongs to another user; set HE2GENE_CACHE" >&2; exit 1; fi
  fi
fi
if [ ! -f "$d/complete" ] || [ ! -x "$d/deno" ]; then
  t=$(mktemp -d "$c/.unpack.XXXXXX")
  trap 'rm -rf "$t"' INT TERM EXIT
  tail -c +${o.denoAt + 1} "$0" | head -c ${o.denoLen} | gzip -dc > "$t/deno"
  tail -c +${o.jsAt + 1} "$0" | head -c ${o.jsLen} | gzip -dc > "$t/he2gene.js"
  chmod 755 "$t/deno"
  : > "$t/complete"
  if [ -f "$d/complete" ] && [ -x "$d/deno" ]; then rm -rf "$t"; else rm -rf "$d"; mv "$t" "$d"; fi
  trap - INT TERM EXIT
fi
HE2GENE_PROG="\${0##*/}" DENO_NO_UPDATE_CHECK=1 exec "$d/deno" run --no-config --no-remote --no-prompt \\
  ${PERMISSIONS.join(" ")} "$d/he2gene.js" "$@"
`;
}

async function gzip(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  const out = await new Response(new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip")))
    .arrayBuffer();
  return new Uint8Array(out);
}

async function sha256(parts: Uint8Array[]): Promise<string> {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) all.set(p, (o += p.length) - p.length);
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return [...h.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Write `bytes` to `path` through a temporary name, so a failure leaves no partial executable. */
async function writeExecutable(path: string, parts: Uint8Array[]): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${Deno.pid}`);
  try {
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o755 });
    try {
      for (const p of parts) {
        let o = 0;
        while (o < p.length) o += await f.write(p.subarray(o));
      }
    } finally {
      f.close();
    }
    await Deno.chmod(tmp, 0o755);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Build the self-extracting executable at `output` from this Deno binary and `deno bundle`'s output. */
export async function packExecutable(output: string, log: (s: string) => void): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "he2gene-pack-" });
  try {
    const js = join(work, "he2gene.js");
    log("bundling the program (deno bundle) …");
    const b = await deno(["bundle", "--quiet", "--platform", "deno", "--config", CONFIG, "-o", js, ENTRY]);
    if (!b.ok) throw new Error(`deno bundle failed:\n${b.stderr.trim()}`);
    log(`compressing the Deno binary (${Deno.execPath()}) …`);
    const denoGz = await gzip(await Deno.readFile(Deno.execPath()));
    const jsGz = await gzip(await Deno.readFile(js));
    const hash = await sha256([denoGz, jsGz]);
    const fields = {
      hash,
      denoLen: denoGz.length,
      jsLen: jsGz.length,
      denoVersion: Deno.version.deno,
      target: Deno.build.target,
      denoAt: 0,
      jsAt: 0,
    };
    // The header states the offsets of what follows it, so its length depends on them: iterate to the
    // fixed point (at most a couple of rounds, as only the digit count can change).
    let header = "";
    for (let i = 0; i < 8; i++) {
      const next = packHeader(fields);
      if (next === header) break;
      header = next;
      const len = new TextEncoder().encode(header).length;
      fields.denoAt = len;
      fields.jsAt = len + denoGz.length;
    }
    await writeExecutable(output, [new TextEncoder().encode(header), denoGz, jsGz]);
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** Build the executable; returns how it was built. */
export async function buildExecutable(o: BuildOptions): Promise<BuildMode> {
  const log = o.log ?? ((s: string) => console.error(s));
  const output = resolve(o.output);
  const mode = o.mode ?? "auto";
  if (mode !== "pack") {
    log(`deno compile → ${output}`);
    const r = await deno([
      "compile",
      ...PERMISSIONS,
      "--config",
      CONFIG,
      "--include",
      WORKER,
      "--output",
      output,
      ENTRY,
    ]);
    if (r.ok) return "deno";
    if (mode === "deno" || !runtimeUnavailable(r.stderr)) {
      throw new Error(`deno compile failed:\n${r.stderr.trim()}`);
    }
    log(
      "deno compile could not obtain Deno's runtime binary (denort, downloaded from dl.deno.land; set\n" +
        "DENORT_BIN to a local copy to use it). Building a self-extracting executable instead.",
    );
  }
  await packExecutable(output, log);
  return "pack";
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      output: { type: "string", default: "he2gene" },
      mode: { type: "string", default: "auto" },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "Usage: deno task compile [--output he2gene] [--mode auto|deno|pack]\n\n" +
        "  --output  path of the executable (default he2gene)\n" +
        "  --mode    auto (default): deno compile, or a self-extracting executable when Deno's runtime\n" +
        "            (denort) can't be downloaded; deno: deno compile only; pack: the self-extracting one",
    );
    Deno.exit(0);
  }
  if (!["auto", "deno", "pack"].includes(values.mode!)) {
    console.error(`Usage error: --mode must be auto, deno or pack, current value is ${values.mode}`);
    Deno.exit(2);
  }
  try {
    const how = await buildExecutable({ output: values.output!, mode: values.mode as BuildOptions["mode"] });
    const size = (await Deno.stat(values.output!)).size / 2 ** 20;
    console.error(
      `built ${values.output} (${size.toFixed(0)} MiB, ${
        how === "deno" ? "deno compile" : "self-extracting"
      }); permissions: ${PERMISSIONS.join(" ")}. Try: ./${basename(values.output!)} info`,
    );
  } catch (e) {
    console.error(`Error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
