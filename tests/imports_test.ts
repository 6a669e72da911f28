/**
 * The dependency rules of ARCHITECTURE.md, checked on the module graph Deno itself resolves (`deno info
 * --json`, static and dynamic imports, type-only ones included): nothing that cli/ imports, directly or
 * through other modules, lies in bench/; nothing that bench/ imports lies in cli/; pipeline/ reaches
 * neither, and calls no `Deno.*` API (it runs in a browser too). `he2gene bench`, which sends the user to
 * `deno task bench`, knows the same options as bench/main.ts.
 */
import { join, relative } from "node:path";
import { fileURLToPath as fromFileUrl, pathToFileURL as toFileUrl } from "node:url";
import { BENCH_OPTION_TYPES } from "../cli/main.ts";
import { BENCH_OPTIONS } from "../bench/main.ts";
import { assertEquals } from "./helpers.ts";

const ROOT = fromFileUrl(new URL("..", import.meta.url));

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(join(ROOT, dir))) {
    const path = join(dir, e.name);
    if (e.isDirectory) out.push(...sources(path));
    else if (e.isFile && e.name.endsWith(".ts")) out.push(path);
  }
  return out.sort();
}

interface Edge {
  to: string;
  /** 1-based line of the import in the importing file. */
  line: number;
}

/** The project's modules reachable from `files` and their import edges (repo-relative paths). */
async function moduleGraph(files: string[]): Promise<Map<string, Edge[]>> {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-imports-" });
  try {
    const root = join(dir, "all.ts");
    await Deno.writeTextFile(root, files.map((f) => `import "${toFileUrl(join(ROOT, f)).href}";\n`).join(""));
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", "--config", join(ROOT, "deno.json"), root],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    if (!r.success) throw new Error(`deno info failed:\n${new TextDecoder().decode(r.stderr)}`);
    const info = JSON.parse(new TextDecoder().decode(r.stdout)) as {
      modules: {
        specifier: string;
        dependencies?: {
          code?: { specifier?: string; span: { start: { line: number } } };
          type?: { specifier?: string; span: { start: { line: number } } };
        }[];
      }[];
    };
    const local = (url: string | undefined) => {
      if (!url?.startsWith("file://")) return null;
      const rel = relative(ROOT, fromFileUrl(url));
      return rel.startsWith("..") ? null : rel;
    };
    const graph = new Map<string, Edge[]>();
    for (const m of info.modules) {
      const from = local(m.specifier);
      if (!from) continue;
      const edges: Edge[] = [];
      for (const d of m.dependencies ?? []) {
        for (const res of [d.code, d.type]) {
          const to = local(res?.specifier);
          if (to) edges.push({ to, line: res!.span.start.line + 1 });
        }
      }
      graph.set(from, edges);
    }
    return graph;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Every path from a module under `from/` to a module under one of `forbidden`, as
 * `a.ts:12 → b.ts:3 → bench/x.ts` (the shortest per offending start).
 */
function forbiddenPaths(graph: Map<string, Edge[]>, from: string, forbidden: string[]): string[] {
  const bad: string[] = [];
  const isForbidden = (p: string) => forbidden.some((f) => p.startsWith(`${f}/`));
  for (const start of [...graph.keys()].filter((k) => k.startsWith(`${from}/`)).sort()) {
    const prev = new Map<string, { from: string; line: number } | null>([[start, null]]);
    const queue = [start];
    let hit: string | null = null;
    while (queue.length && !hit) {
      const at = queue.shift()!;
      for (const e of graph.get(at) ?? []) {
        if (prev.has(e.to)) continue;
        prev.set(e.to, { from: at, line: e.line });
        if (isForbidden(e.to)) {
          hit = e.to;
          break;
        }
        queue.push(e.to);
      }
    }
    if (!hit) continue;
    const chain: string[] = [hit];
    for (let p = prev.get(hit); p; p = prev.get(p.from)) chain.unshift(`${p.from}:${p.line}`);
    bad.push(chain.join(" → "));
  }
  return bad;
}

const graph = await moduleGraph([...sources("cli"), ...sources("bench"), ...sources("pipeline")]);

Deno.test("the module graph covers cli/, bench/ and pipeline/ and their imports", () => {
  const reaches = (a: string, b: string) => {
    const seen = new Set([a]), queue = [a];
    while (queue.length) {
      for (const e of graph.get(queue.shift()!) ?? []) {
        if (!seen.has(e.to)) seen.add(e.to), queue.push(e.to);
      }
    }
    return seen.has(b);
  };
  assertEquals(reaches("cli/main.ts", "pipeline/predict_slide.ts"), true);
  assertEquals(reaches("bench/main.ts", "pipeline/predict_slide.ts"), true);
  assertEquals(reaches("pipeline/mod.ts", "engine/engine.ts"), true);
});

Deno.test("cli/ never imports bench/, directly or through other modules", () => {
  assertEquals(forbiddenPaths(graph, "cli", ["bench"]), []);
});

Deno.test("bench/ never imports cli/, directly or through other modules", () => {
  assertEquals(forbiddenPaths(graph, "bench", ["cli"]), []);
});

Deno.test("pipeline/ imports neither cli/ nor bench/", () => {
  assertEquals(forbiddenPaths(graph, "pipeline", ["cli", "bench"]), []);
});

Deno.test("pipeline/ calls no Deno API (it is the layer a browser runs)", () => {
  const uses: string[] = [];
  for (const f of sources("pipeline")) {
    Deno.readTextFileSync(join(ROOT, f)).split("\n").forEach((line, i) => {
      const code = line.trimStart();
      if (code.startsWith("*") || code.startsWith("/*") || code.startsWith("//")) return; // comments
      if (/\bDeno\./.test(code)) uses.push(`${f}:${i + 1}: ${code}`);
    });
  }
  assertEquals(uses, []);
});

Deno.test("he2gene bench knows the options deno task bench parses (it answers them without importing it)", () => {
  const bench = Object.fromEntries(Object.entries(BENCH_OPTIONS).map(([k, o]) => [k, o.type]));
  assertEquals(BENCH_OPTION_TYPES, bench);
});
