/**
 * `deno task web:build`: bundle the page's code (`web/app.ts`: `pipeline/`, the engine and the wasm
 * decoders, which the bundle inlines) into `web/dist/he2gene.js` with `deno bundle`. The import map is
 * deno.json's plus `node:zlib` and `node:path` pointed at `web/shims/` (a browser has neither).
 *
 * @module
 */
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

/** Bundle the page; resolves to the bundle's path, throws with `deno bundle`'s output on failure. */
export async function buildWeb(o: { minify?: boolean } = {}): Promise<string> {
  const out = `${root}web/dist/he2gene.js`;
  const config = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
  const importMap = `${await Deno.makeTempDir({ prefix: "he2gene-web-" })}/import_map.json`;
  const shim = (name: string) => new URL(`./shims/${name}.ts`, import.meta.url).href;
  await Deno.writeTextFile(
    importMap,
    JSON.stringify({ imports: { ...config.imports, "node:zlib": shim("zlib"), "node:path": shim("path") } }),
  );
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--import-map",
      importMap,
      ...(o.minify ? ["--minify"] : []),
      "--output",
      out,
      `${root}web/app.ts`,
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output().finally(() => Deno.remove(importMap.replace(/\/import_map\.json$/, ""), { recursive: true }));
  if (code !== 0) {
    const td = new TextDecoder();
    throw new Error(`Cannot bundle web/app.ts:\n${td.decode(stdout)}${td.decode(stderr)}`);
  }
  return out;
}

if (import.meta.main) {
  const t0 = performance.now();
  const out = await buildWeb({ minify: !Deno.args.includes("--no-minify") });
  const size = (await Deno.stat(out)).size;
  console.log(
    `${out} (${(size / 2 ** 20).toFixed(1)} MiB) in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}
