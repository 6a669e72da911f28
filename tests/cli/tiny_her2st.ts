/**
 * A tiny her2st-layout dataset for the CLI tests (train, truth): three sections X1–X3 of nine spots each.
 */
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { encodePng } from "../../slide/png.ts";
import { rand } from "../helpers.ts";

/**
 * A her2st-layout folder of three sections X1–X3 (a 3 × 3 grid of spots each on a 120 px image, 5 genes of
 * seeded counts, expression-cluster tumour labels); returns the root, and the counts and tumour label of
 * each spot by name.
 */
export async function tinyHer2st(
  dir: string,
): Promise<{ root: string; counts: Map<string, number[]>; tumor: Map<string, number> }> {
  const genes = ["G0", "G1", "G2", "G3", "G4"];
  const counts = new Map<string, number[]>(), tumor = new Map<string, number>();
  const write = async (path: string, data: string | Uint8Array) => {
    await Deno.mkdir(join(dir, path, ".."), { recursive: true });
    await (typeof data === "string"
      ? Deno.writeTextFile(join(dir, path), data)
      : Deno.writeFile(join(dir, path), data));
  };
  const gz = (s: string) => gzipSync(new TextEncoder().encode(s));
  for (const [k, s] of ["X1", "X2", "X3"].entries()) {
    const px = Uint8Array.from(rand(120 * 120 * 3, 10 + k, 0, 255), (v) => v);
    await write(`data/ST-imgs/X/${s}/${s}.jpg`, encodePng(120, 120, px)); // read by its signature
    const spots = [], rows = [], labels = [];
    const c = rand(9 * genes.length, 20 + k, 0, 30);
    for (let i = 0; i < 9; i++) {
      const [x, y] = [1 + (i % 3), 1 + Math.floor(i / 3)];
      spots.push(`${x}\t${y}\t${x}\t${y}\t${20 + 40 * (i % 3)}\t${20 + 40 * Math.floor(i / 3)}\t1`);
      const row = Array.from(c.subarray(i * genes.length, (i + 1) * genes.length), Math.floor);
      counts.set(`${s}_${x}_${y}`, row);
      tumor.set(`${s}_${x}_${y}`, i % 2); // cluster 1 is "cancer cells"
      rows.push(`${x}x${y}\t${row.join("\t")}`);
      labels.push(`${x}x${y}\tX\t${i % 2}\t${x}\t${y}`);
    }
    await write(
      `data/ST-spotfiles/${s}_selection.tsv`,
      `x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n${spots.join("\n")}\n`,
    );
    await write(`data/ST-cnts/${s}.tsv.gz`, gz(`\t${genes.join("\t")}\n${rows.join("\n")}\n`));
    await write(
      `res/ST-cluster/lbl/${s}-cluster-annotation.tsv.gz`,
      gz(`\tpatient_id\tlabel\tx\ty\n${labels.join("\n")}\n`),
    );
  }
  await write(
    "res/ST-cluster/motivation.csv",
    "patient,cluster,annotated as\nX,0,stroma\nX,1,cancer cells\n",
  );
  return { root: dir, counts, tumor };
}
