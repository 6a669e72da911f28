/**
 * `node:path` for the browser bundle (the import map of `web/build.ts` points `node:path` here): POSIX
 * `join`, `basename`, `dirname`, `extname`, `isAbsolute` and `resolve` (against `/`), for the names that
 * `slide/` builds; a page has no file system, so nothing here touches one.
 *
 * @module
 */

function normalize(p: string): string {
  const abs = p.startsWith("/");
  const out: string[] = [];
  for (const s of p.split("/")) {
    if (s === "" || s === ".") continue;
    if (s === "..") {
      if (out.length && out[out.length - 1] !== "..") out.pop();
      else if (!abs) out.push("..");
    } else out.push(s);
  }
  return (abs ? "/" : "") + out.join("/") || (abs ? "/" : ".");
}

/** `join("a", "b/../c")` → `a/c`. */
export function join(...parts: string[]): string {
  return normalize(parts.filter((p) => p !== "").join("/"));
}

/** Whether `p` starts at the root. */
export function isAbsolute(p: string): boolean {
  return p.startsWith("/");
}

/** `resolve` against `/` (a page has no working directory). */
export function resolve(...parts: string[]): string {
  let p = "";
  for (const s of parts) p = isAbsolute(s) ? s : `${p}/${s}`;
  return normalize(isAbsolute(p) ? p : `/${p}`);
}

/** The last part of `p`, without `ext` when it ends with it. */
export function basename(p: string, ext?: string): string {
  const b = p.replace(/\/+$/, "").split("/").pop() ?? "";
  return ext && b.endsWith(ext) && b !== ext ? b.slice(0, -ext.length) : b;
}

/** All but the last part of `p`. */
export function dirname(p: string): string {
  const t = p.replace(/\/+$/, "");
  const i = t.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : t.slice(0, i);
}

/** The extension of `p`'s last part, with its dot (`""` when none). */
export function extname(p: string): string {
  const b = basename(p), i = b.lastIndexOf(".");
  return i <= 0 ? "" : b.slice(i);
}
