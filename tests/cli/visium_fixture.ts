/**
 * A Space Ranger `spatial/` folder built from the small Visium set in ../shared/data/visium, for the
 * predict-slide and extract-patches tests on its lowres image.
 */
import { join } from "node:path";

/**
 * A Space Ranger `spatial/` folder in `dir`: the lowres image of the Visium set in `visium`, its scale
 * factors and the positions of the in-tissue spots (`keep` of them evenly spaced, all by default), as
 * `tissue_positions.csv` with Space Ranger 2's header. Returns the folder, the spots (array col, row;
 * full-resolution x, y) and `tissue_lowres_scalef`.
 */
export async function visiumSpatial(
  visium: string,
  dir: string,
  keep = Infinity,
): Promise<
  { spatial: string; spots: { col: number; row: number; fx: number; fy: number }[]; scalef: number }
> {
  const spatial = join(dir, "spatial");
  await Deno.mkdir(spatial, { recursive: true });
  for (const f of ["tissue_lowres_image.png", "scalefactors_json.json"]) {
    await Deno.copyFile(join(visium, f), join(spatial, f));
  }
  const rows = (await Deno.readTextFile(join(visium, "tissue_positions_list.csv"))).trim().split("\n")
    .map((l) => l.split(",")).filter((f) => f[1] === "1");
  const step = Math.max(1, Math.floor(rows.length / Math.min(keep, rows.length)));
  const kept = rows.filter((_, i) => i % step === 0).slice(0, keep);
  await Deno.writeTextFile(
    join(spatial, "tissue_positions.csv"),
    "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" +
      kept.map((f) => f.join(",")).join("\n") + "\n",
  );
  const scalef =
    JSON.parse(await Deno.readTextFile(join(visium, "scalefactors_json.json"))).tissue_lowres_scalef;
  return {
    spatial,
    spots: kept.map((f) => ({ col: Number(f[3]), row: Number(f[2]), fx: Number(f[5]), fy: Number(f[4]) })),
    scalef,
  };
}
