/**
 * Spot files: a her2st / ST `*_selection.tsv` (`x y new_x new_y pixel_x pixel_y selected`; rows with
 * selected = 0 are skipped), a Visium `tissue_positions(_list).csv` (in-tissue spots; header optional), or
 * a CSV with `x,y,pixel_x,pixel_y`, parsed from their text. A file that lists a spot twice (two rows at one
 * array position, or one Visium barcode on two rows) is refused naming the rows, as is one without spots to
 * use, with the reason (empty, a header only, no spot selected / in tissue). Spot names: predictions and
 * truth name a spot `{section}_{x}_{y}`; {@linkcode canonicalSpotNames} reads her2st's `{x}x{y}` ids (and
 * `{section}_{x}x{y}`) as such, so either naming joins the other.
 *
 * @module
 */
/** A spot to cut: array coordinates and the level-0 pixel centre. */
export interface SpotRow {
  x: number;
  y: number;
  px: number;
  py: number;
}

/**
 * Parse a spot file (see the module doc). Errors name the file and line. A file without spots to use
 * (empty, a header only, every spot unselected / out of tissue) is refused with that cause, and so is one
 * that lists a spot twice: two rows at one array position (they would share one patch file and one output
 * name) or, in a Visium file, one barcode on two rows.
 */
export function parseSpots(text: string, file: string): SpotRow[] {
  // Non-blank lines with their line numbers in the file.
  const lines = text.split(/\r?\n/).map((l, i) => ({ l, n: i + 1 })).filter(({ l }) => l.trim().length > 0);
  if (lines.length === 0) throw new Error(`Cannot read spots from ${file}: the file is empty`);
  const sep = lines[0].l.includes("\t") ? "\t" : ",";
  const head = lines[0].l.split(sep).map((s) => s.trim().replace(/^"|"$/g, ""));
  const col = (names: string[]) => names.map((n) => head.indexOf(n)).find((i) => i >= 0) ?? -1;
  const rows: SpotRow[] = [];
  const ids: SpotId[] = []; // one per kept row
  const num = (s: string, line: number, what: string) => {
    const v = Number(s);
    if (!Number.isFinite(v)) {
      throw new Error(`Cannot read spots from ${file}, line ${line}: ${what} "${s}" is not a number`);
    }
    return v;
  };
  const noSpots = (body: number, why: string): never => {
    throw new Error(
      body === 0
        ? `Cannot read spots from ${file}: it holds a header (${head.join(", ")}) but no spot rows`
        : `Cannot read spots from ${file}: ${why}, so there is no spot to use`,
    );
  };
  if (spotFileFormat(text) === "pixel") {
    // her2st selection file or x,y,pixel_x,pixel_y CSV.
    const [ix, iy, ipx, ipy, isel] = [
      col(["x"]),
      col(["y"]),
      col(["pixel_x"]),
      col(["pixel_y"]),
      col(["selected"]),
    ];
    if (ix < 0 || iy < 0 || ipy < 0) {
      throw new Error(
        `Cannot read spots from ${file}: expected columns x, y, pixel_x, pixel_y; found ${head.join(", ")}`,
      );
    }
    const body = lines.slice(1);
    for (const { l, n } of body) {
      const f = l.split(sep);
      if (isel >= 0 && Number(f[isel]) === 0) continue;
      const x = Math.round(num(f[ix], n, "x")), y = Math.round(num(f[iy], n, "y"));
      rows.push({ x, y, px: num(f[ipx], n, "pixel_x"), py: num(f[ipy], n, "pixel_y") });
      ids.push({ key: `${x}x${y}`, name: `spot ${x}x${y} (x = ${x}, y = ${y})`, line: n });
    }
    if (rows.length === 0) {
      noSpots(
        body.length,
        body.length === 1 ? "its one spot has selected = 0" : `all ${body.length} spots have selected = 0`,
      );
    }
    refuseDuplicateSpots(file, ids);
    return rows;
  }
  // Visium: barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres (header optional).
  const body = head.includes("barcode") ? lines.slice(1) : lines;
  const barcodes: SpotId[] = [];
  for (const { l, n } of body) {
    const f = l.split(",");
    if (f.length < 6) {
      throw new Error(
        `Cannot read spots from ${file}, line ${n}: expected 6 Visium columns or x,y,pixel_x,pixel_y`,
      );
    }
    const barcode = f[0].trim().replace(/^"|"$/g, "");
    barcodes.push({ key: barcode, name: `barcode ${barcode}`, line: n });
    if (Number(f[1]) !== 1) continue;
    const x = num(f[3], n, "array_col"), y = num(f[2], n, "array_row");
    rows.push({ x, y, px: num(f[5], n, "pxl_col_in_fullres"), py: num(f[4], n, "pxl_row_in_fullres") });
    ids.push({ key: `${x}x${y}`, name: `the spot at array_col ${x}, array_row ${y}`, line: n });
  }
  refuseDuplicateSpots(file, barcodes);
  if (rows.length === 0) {
    const which = body.length === 1 ? "its one spot is not" : `none of its ${body.length} spots is`;
    noSpots(body.length, `${which} in tissue (in_tissue = 1)`);
  }
  refuseDuplicateSpots(file, ids);
  return rows;
}

/**
 * What a spot file's coordinates are: `pixel` (a her2st selection file or a CSV with `pixel_x`, `pixel_y`:
 * pixels of the image they go with) or `visium` (`tissue_positions(_list).csv`: full-resolution pixels).
 */
export function spotFileFormat(text: string): "pixel" | "visium" {
  const first = text.split(/\r?\n/).find((l) => l.trim().length > 0) ?? "";
  const head = first.split(first.includes("\t") ? "\t" : ",").map((s) => s.trim().replace(/^"|"$/g, ""));
  return head.includes("pixel_x") ? "pixel" : "visium";
}

/** A spot's identity in a spot file: what must be unique, how to name it, and its line. */
interface SpotId {
  key: string;
  name: string;
  line: number;
}

/** Refuse a spot file that lists a spot twice, naming the spots and their lines (at most 5). */
function refuseDuplicateSpots(file: string, ids: SpotId[]): void {
  const lines = new Map<string, SpotId[]>();
  for (const s of ids) lines.set(s.key, [...(lines.get(s.key) ?? []), s]);
  const dup = [...lines.values()].filter((g) => g.length > 1);
  if (dup.length === 0) return;
  const shown = dup.slice(0, 5).map((g) => `${g[0].name} on lines ${g.map((s) => s.line).join(", ")}`);
  if (dup.length > 5) shown.push("…");
  const many = dup.length > 1 ? "s are" : " is";
  throw new Error(
    `Cannot read spots from ${file}: ${dup.length} spot${many} listed more than once — ` +
      `${shown.join("; ")}. Each spot must appear once (two rows would ` +
      `write one patch file and one output name for two spots)`,
  );
}

const SECTIONED = /^(.+)_(-?\d+)_(-?\d+)$/,
  SECTIONED_X = /^(.+)_(-?\d+)x(-?\d+)$/,
  BARE = /^(-?\d+)x(-?\d+)$/;

/**
 * `names` in the naming `{section}_{x}_{y}` (cli/truth.ts's `spotName`), so that they join `other` (the other file's names): an id
 * `{section}_{x}x{y}` becomes `{section}_{x}_{y}`, and a bare her2st id `{x}x{y}` gets the section of
 * `other`'s names when they are all of one section (when `other` has none, both sides keep bare ids).
 * Other names (Visium barcodes, tiles) are left as they are.
 *
 * @example
 * ```ts
 * canonicalSpotNames(["25x13", "C2_3x4"], ["C2_25_13"]); // ["C2_25_13", "C2_3_4"]
 * ```
 */
export function canonicalSpotNames(names: readonly string[], other: readonly string[]): string[] {
  const out = names.map((n) => n.replace(SECTIONED_X, "$1_$2_$3"));
  if (!out.some((n) => BARE.test(n))) return out;
  const sections = new Set<string>();
  for (const n of other) {
    const m = SECTIONED.exec(n.replace(SECTIONED_X, "$1_$2_$3"));
    if (m) sections.add(m[1]);
  }
  if (sections.size === 0) return out;
  if (sections.size > 1) {
    const bare = out.find((n) => BARE.test(n))!;
    const [x, y] = bare.split("x");
    const shown = [...sections].slice(0, 5).join(", ");
    throw new Error(
      `Cannot join spot names: "${bare}" names no section, and the other file holds spots of ` +
        `${sections.size} sections (${shown}${sections.size > 5 ? ", …" : ""}); name the spots ` +
        `{section}_{x}_{y} (e.g. ${[...sections][0]}_${x}_${y}), or give one section's truth`,
    );
  }
  const [section] = sections;
  return out.map((n) => n.replace(BARE, `${section}_$1_$2`));
}
