/**
 * `deno task web [--port N]`: serve the page (`web/`, after `web:build`) on 127.0.0.1 (default port 8000).
 * A small static server: GET / HEAD only, no directory listings, nothing outside its folders.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".tif": "image/tiff",
  ".tiff": "image/tiff",
  ".txt": "text/plain; charset=utf-8",
};

/** The folder of the page. */
export const WEB_ROOT: string = fileURLToPath(new URL(".", import.meta.url));

/** Options of {@linkcode serveWeb}. */
export interface ServeWebOptions {
  /** Default 8000; 0 picks a free port. */
  port?: number;
  hostname?: string;
  /** Extra folders by URL prefix, e.g. `{ "/data/": "../shared/data/he2gene/exps" }` (tests). */
  mounts?: Record<string, string>;
  /** Print nothing. */
  quiet?: boolean;
}

/**
 * Serve `web/` at `/` and each mount at its prefix; returns the listening server and its URL.
 *
 * @example
 * ```ts ignore
 * const { server, url } = serveWeb({ port: 0, quiet: true });
 * await server.shutdown();
 * ```
 */
export function serveWeb(o: ServeWebOptions = {}): { server: Deno.HttpServer<Deno.NetAddr>; url: string } {
  const mounts: [string, string][] = [
    ...Object.entries(o.mounts ?? {}).map(([p, d]) => [p, resolve(d)] as [string, string]),
    ["/", resolve(WEB_ROOT)],
  ];
  const server = Deno.serve({
    port: o.port ?? 8000,
    hostname: o.hostname ?? "127.0.0.1",
    onListen: () => {},
  }, async (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed", { status: 405 });
    }
    let path: string;
    try {
      path = decodeURIComponent(new URL(req.url).pathname);
    } catch {
      return new Response("bad request", { status: 400 });
    }
    if (path === "/") path = "/index.html";
    const [prefix, dir] = mounts.find(([p]) => path.startsWith(p))!;
    const file = normalize(join(dir, path.slice(prefix.length)));
    if (file !== dir && !file.startsWith(dir + "/")) return new Response("forbidden", { status: 403 });
    try {
      const body = await Deno.readFile(file);
      return new Response(req.method === "HEAD" ? null : body, {
        headers: {
          "content-type": TYPES[extname(file).toLowerCase()] ?? "application/octet-stream",
          "cache-control": "no-cache",
        },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  const url = `http://${server.addr.hostname}:${server.addr.port}/`;
  if (!o.quiet) console.log(`he2gene web page: ${url} (Ctrl-C stops)`);
  return { server, url };
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { port: { type: "string", default: "8000" } } });
  const port = Number(values.port);
  if (!(Number.isInteger(port) && port >= 0 && port < 65536)) {
    console.error(`Cannot serve on --port ${values.port}: expected an integer 0…65535`);
    Deno.exit(2);
  }
  try {
    await Deno.stat(join(WEB_ROOT, "dist", "he2gene.js"));
  } catch {
    console.error("web/dist/he2gene.js is missing: run `deno task web:build` first");
    Deno.exit(1);
  }
  serveWeb({ port });
}
