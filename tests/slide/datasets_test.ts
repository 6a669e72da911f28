import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { assertEquals, assertRejects, assertThrows, sharedData } from "../helpers.ts";
import {
  DatasetError,
  imageSize,
  readH5,
  readHbcis,
  readHer2st,
  readMex,
  readVisium,
  type Spot,
} from "../../slide/datasets/mod.ts";
import { gridNeighbours, log1pNormalize, selectTargetGenes } from "../../slide/genes.ts";
import { encodeNpz } from "../../slide/npy.ts";
import { encodePng } from "../../slide/png.ts";
import { makeUnique, readScalefactors, visiumImage, visiumImageKind } from "../../slide/datasets/visium.ts";

const PY = "/usr/bin/python3";

/** Run python; null (with a message) when python or `module` is missing. */
async function python(code: string, module: string): Promise<string | null> {
  try {
    const out = await new Deno.Command(PY, { args: ["-c", code], stdout: "piped", stderr: "piped" }).output();
    const err = new TextDecoder().decode(out.stderr);
    if (!out.success) {
      if (err.includes(`No module named '${module}'`)) {
        console.warn(`skipped: ${module} is not installed for ${PY}`);
        return null;
      }
      throw new Error(`python failed: ${err}`);
    }
    return new TextDecoder().decode(out.stdout);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      console.warn(`skipped: ${PY} is absent`);
      return null;
    }
    throw e;
  }
}

async function withTemp(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A JPEG header (SOI, APP0, SOF0) of `w` × `h`: enough for imageSize. */
function jpegHeader(w: number, h: number): Uint8Array {
  return new Uint8Array([
    0xff,
    0xd8,
    0xff,
    0xe0,
    0x00,
    0x04,
    0x00,
    0x00,
    0xff,
    0xc0,
    0x00,
    0x11,
    0x08,
    h >> 8,
    h & 255,
    w >> 8,
    w & 255,
    3,
    1,
    0x22,
    0,
    2,
    0x11,
    1,
    3,
    0x11,
    1,
    0xff,
    0xd9,
  ]);
}

// ---------------------------------------------------------------------------------------------------------
// her2st

Deno.test("her2st: sections C2–C5 load with counts, pixels, cluster labels and measured mpp", async () => {
  const root = sharedData("her2st");
  if (!root) return;
  const ds = await readHer2st(root);
  assertEquals(ds.sections.map((s) => [s.id, s.spots.length]), [["C2", 187], ["C3", 180], ["C4", 184], [
    "C5",
    181,
  ]]);
  for (const s of ds.sections) {
    assertEquals([s.labelSource, s.grid, s.imageScale, s.slidePath.endsWith(".jpg")], [
      "cluster",
      "square",
      1,
      true,
    ]);
    assertEquals(s.mpp! > 0.68 && s.mpp! < 0.70, true, `${s.id} mpp ${s.mpp}`);
    for (const p of s.spots) assertEquals(p.counts!.length, ds.genes.length);
  }
  assertEquals(ds.sections[0].imageSize, [9274, 9911]);
  // Values read directly from the files (zcat | awk).
  const g = (name: string) => ds.genes.indexOf(name);
  const c2 = ds.sections[0].spots.find((p) => p.id === "10x21")!;
  assertEquals([c2.pixel, c2.array, c2.label, c2.tumor], [
    [2545.13, 5822.13],
    [10, 21],
    "immune : B/plasma cells, endothelium",
    false,
  ]);
  assertEquals([c2.counts![g("ERBB2")], c2.counts![g("GAPDH")], c2.counts![g("ISG15")]], [7, 6, 1]);
  const c5 = ds.sections[3].spots.find((p) => p.id === "10x11")!;
  assertEquals([c5.pixel, c5.label, c5.tumor], [[2585.15, 2922.83], "cancer 1", true]);
  assertEquals([c5.counts![g("ERBB2")], c5.counts![g("GAPDH")]], [97, 10]);
  // Tumour = clusters named "cancer …": 83 + 84 + 78 + 77 annotated spots of clusters 2–4.
  assertEquals(ds.sections.flatMap((s) => s.spots).filter((p) => p.tumor).length, 322);
  // Problems are reported with counts: spot-file rows without counts, spots without a cluster.
  const w = (code: string) => ds.warnings.filter((x) => x.code === code).map((x) => [x.section, x.count]);
  assertEquals(w("spots-without-counts"), [["C3", 2], ["C4", 3], ["C5", 2]]);
  assertEquals(w("unlabelled-spots"), [["C2", 2], ["C3", 1], ["C5", 2]]);
  assertEquals(w("unjoined-spots"), []);
  assertEquals(w("outside-image"), []);
  assertEquals(ds.sections[0].missingGenes!.length, w("missing-genes")[0][1]);
});

Deno.test("her2st: an explicit gene list keeps its order and reports genes absent from a section", async () => {
  const root = sharedData("her2st");
  if (!root) return;
  const ds = await readHer2st(root, { sections: ["C2"], genes: ["GAPDH", "NOT_A_GENE", "ERBB2"] });
  assertEquals(ds.genes, ["GAPDH", "NOT_A_GENE", "ERBB2"]);
  assertEquals([...ds.sections[0].spots.find((p) => p.id === "10x22")!.counts!], [4, 0, 30]);
  assertEquals(ds.sections[0].missingGenes, ["NOT_A_GENE"]);
  assertEquals(ds.warnings.find((x) => x.code === "missing-genes")?.count, 1);
});

/** A tiny her2st layout: section X1, 3 counted spots (one without a spot-file row, one NaN). */
async function tinyHer2st(dir: string, opts: { labels?: boolean } = {}): Promise<void> {
  await Deno.mkdir(join(dir, "data", "ST-cnts"), { recursive: true });
  await Deno.mkdir(join(dir, "data", "ST-spotfiles"), { recursive: true });
  await Deno.mkdir(join(dir, "data", "ST-imgs", "X", "X1"), { recursive: true });
  await Deno.writeFile(join(dir, "data", "ST-imgs", "X", "X1", "x.jpg"), jpegHeader(200, 100));
  await Deno.writeFile(
    join(dir, "data", "ST-cnts", "X1.tsv.gz"),
    gzipSync(new TextEncoder().encode("\tA\tB\n1x1\t1\t2\n2x1\tNaN\t3\n9x9\t0\t1\n")),
  );
  await Deno.writeTextFile(
    join(dir, "data", "ST-spotfiles", "X1_selection.tsv"),
    "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n1\t1\t1.02\t0.99\t50\t50\t1\n2\t1\t2.01\t1.0\t500\t51\t1\n",
  );
  if (opts.labels) {
    await Deno.mkdir(join(dir, "data", "ST-pat", "lbl"), { recursive: true });
    await Deno.writeTextFile(
      join(dir, "data", "ST-pat", "lbl", "X1_labeled_coordinates.tsv"),
      "Row.names\tx\ty\tpixel_x\tpixel_y\tlabel\n50x50\t1.02\t0.99\t50\t50\tinvasive cancer\n",
    );
  }
}

Deno.test("her2st: unjoined spots, NaN counts and spots outside the image are warnings with counts", async () => {
  await withTemp("her2st_", async (dir) => {
    await tinyHer2st(dir, { labels: true });
    const ds = await readHer2st(dir);
    const s = ds.sections[0];
    assertEquals(s.spots.map((p) => [p.id, [...p.counts!]]), [["1x1", [1, 2]], ["2x1", [0, 3]]]);
    assertEquals([s.labelSource, s.spots[0].label, s.spots[0].tumor, s.spots[1].label], [
      "pathologist",
      "invasive cancer",
      true,
      undefined,
    ]);
    assertEquals(s.imageSize, [200, 100]);
    const w = Object.fromEntries(ds.warnings.map((x) => [x.code, x]));
    assertEquals(Object.keys(w).sort(), [
      "invalid-counts",
      "outside-image",
      "unjoined-spots",
      "unlabelled-spots",
    ]);
    assertEquals([w["invalid-counts"].count, w["unjoined-spots"].count, w["outside-image"].count], [1, 1, 1]);
    assertEquals(w["invalid-counts"].message.includes('spot 2x1, gene A: "NaN" (line 3)'), true);
    assertEquals(w["unjoined-spots"].message.includes("9x9"), true);
    await assertRejects(
      () => readHer2st(dir, { invalid: "error" }),
      DatasetError,
      'X1.tsv.gz:3: expected a count ≥ 0 for spot 2x1, gene A, found "NaN"',
    );
    await assertRejects(
      () => readHer2st(dir, { sections: ["Y1"] }),
      DatasetError,
      "expected the counts of section Y1",
    );
  });
});

Deno.test("her2st: an empty or missing folder is a clear error", async () => {
  await withTemp("her2st_empty_", async (dir) => {
    await assertRejects(() => readHer2st(dir), DatasetError, "expected a her2st folder with data/ST-cnts/");
    await Deno.mkdir(join(dir, "data", "ST-cnts"), { recursive: true });
    await assertRejects(() => readHer2st(dir), DatasetError, "expected at least one section");
  });
});

Deno.test("her2st: a gene column, a count row or a spot-file row twice is refused, naming file and duplicates", async () => {
  await withTemp("her2st_dups_", async (dir) => {
    await tinyHer2st(dir);
    const cnts = join(dir, "data", "ST-cnts", "X1.tsv.gz");
    const sel = join(dir, "data", "ST-spotfiles", "X1_selection.tsv");
    const gz = (t: string) => gzipSync(new TextEncoder().encode(t));
    await Deno.writeFile(cnts, gz("\tA\tB\tA\tB\n1x1\t1\t2\t3\t4\n"));
    await assertRejects(
      () => readHer2st(dir),
      DatasetError,
      `${cnts}:1: expected one column per gene, found 2 gene name(s) in more than one column: ` +
        "A (columns 2, 4), B (columns 3, 5)",
    );
    await Deno.writeFile(cnts, gz("\tA\tB\n1x1\t1\t2\n2x1\t0\t3\n1x1\t4\t4\n"));
    await assertRejects(() => readHer2st(dir), DatasetError, "1x1 (lines 2, 4)");
    await Deno.writeFile(cnts, gz("\tA\tB\n1x1\t1\t2\n2x1\t0\t3\n"));
    await Deno.writeTextFile(
      sel,
      "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n1\t1\t1\t1\t50\t50\t1\n1.1\t0.9\t1\t1\t52\t49\t1\n",
    );
    await assertRejects(
      () => readHer2st(dir),
      DatasetError,
      `${sel}: expected one row per spot (x y rounded)`,
    );
    await Deno.writeTextFile(
      sel,
      "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n1\t1\t1\t1\t50\t50\t1\n",
    );
    assertEquals((await readHer2st(dir)).sections[0].spots.length, 1);
    await assertRejects(() => readHer2st(dir, { genes: ["A", "B", "A"] }), RangeError, "A (2×)");
  });
});

// ---------------------------------------------------------------------------------------------------------
// Visium

Deno.test("visium: 100 spots with counts from the h5, positions, scale factors and mpp", async () => {
  const dir = sharedData("visium");
  if (!dir) return;
  const ds = await readVisium(dir, { image: "lowres" });
  const s = ds.sections[0];
  assertEquals([ds.genes.length, s.spots.length, s.grid, s.imageScale, s.imageSize], [
    100,
    100,
    "hex",
    0.045004502,
    [600, 600],
  ]);
  assertEquals(s.slidePath.endsWith("tissue_lowres_image.png"), true);
  assertEquals(Math.abs(s.mpp! - 55 / 89.42751063343188) < 1e-12, true);
  // First rows of tissue_positions_list.csv: barcode,in_tissue,array_row,array_col,pxl_row,pxl_col.
  assertEquals([s.spots[0].id, s.spots[0].array, s.spots[0].pixel], ["AAACAAGTATCTCCCA-1", [102, 50], [
    9811,
    8513,
  ]]);
  assertEquals([s.spots[1].id, s.spots[1].array, s.spots[1].pixel], ["AAACACCAATAACTGC-1", [19, 59], [
    4104,
    9605,
  ]]);
  // First column of the CSC matrix: indices 39 40 49 55 57 94, data 1 1 1 5 1 1.
  const nz = [...s.spots[0].counts!].flatMap((v, i) => v ? [[i, v]] : []);
  assertEquals(nz, [[39, 1], [40, 1], [49, 1], [55, 5], [57, 1], [94, 1]]);
  assertEquals(ds.warnings, []);
  assertEquals((await readVisium(dir)).sections[0].imageScale, 0.150015); // hires by default

  const out = await python(
    `import h5py, json, numpy as np
f = h5py.File(${JSON.stringify(join(dir, "filtered_feature_bc_matrix.h5"))}, 'r'); m = f['matrix']
g, b = m['shape'][:]; dense = np.zeros((b, g))
ip, ix, d = m['indptr'][:], m['indices'][:], m['data'][:]
for j in range(b): dense[j, ix[ip[j]:ip[j+1]]] = d[ip[j]:ip[j+1]]
print(json.dumps({'sum': dense.sum(1).tolist(), 'name': [x.decode() for x in m['features/name'][:5]],
  'bc': [x.decode() for x in m['barcodes'][[0, 50, 99]]], 'v': [dense[50, 3], dense[99, 99], dense[7].max()]}))`,
    "h5py",
  );
  if (out === null) return;
  const want = JSON.parse(out);
  const sums = s.spots.map((p) => p.counts!.reduce((a, b) => a + b, 0));
  assertEquals(sums, want.sum);
  assertEquals(ds.genes.slice(0, 5), want.name);
  assertEquals([s.spots[0].id, s.spots[50].id, s.spots[99].id], want.bc);
  assertEquals([s.spots[50].counts![3], s.spots[99].counts![99], Math.max(...s.spots[7].counts!)], want.v);
});

Deno.test("visium: spatial/ layout, tissue_positions.csv with header and a Matrix Market folder match the h5", async () => {
  const src = sharedData("visium");
  if (!src) return;
  const h5 = await readH5(join(src, "filtered_feature_bc_matrix.h5"));
  await withTemp("visium_", async (dir) => {
    await Deno.mkdir(join(dir, "spatial"));
    await Deno.mkdir(join(dir, "filtered_feature_bc_matrix"));
    const pos = (await Deno.readTextFile(join(src, "tissue_positions_list.csv"))).trim().split("\n");
    // Drop one barcode's position (unjoined), add one in-tissue position without counts.
    await Deno.writeTextFile(
      join(dir, "spatial", "tissue_positions.csv"),
      [
        "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres",
        ...pos.slice(1),
        "ZZZ-1,1,0,0,1,1",
      ]
        .join("\n"),
    );
    await Deno.copyFile(join(src, "scalefactors_json.json"), join(dir, "spatial", "scalefactors_json.json"));
    await Deno.copyFile(
      join(src, "tissue_lowres_image.png"),
      join(dir, "spatial", "tissue_lowres_image.png"),
    );
    const g = h5.genes.length;
    const entries: string[] = [];
    h5.barcodes.forEach((_, b) => {
      for (let j = 0; j < g; j++) {
        if (h5.values[b * g + j]) entries.push(`${j + 1} ${b + 1} ${h5.values[b * g + j]}`);
      }
    });
    const mex = join(dir, "filtered_feature_bc_matrix");
    const gz = (s: string) => gzipSync(new TextEncoder().encode(s));
    await Deno.writeFile(
      join(mex, "matrix.mtx.gz"),
      gz(
        `%%MatrixMarket matrix coordinate integer general\n%\n${g} ${h5.barcodes.length} ${entries.length}\n${
          entries.join("\n")
        }\n`,
      ),
    );
    await Deno.writeFile(join(mex, "barcodes.tsv.gz"), gz(h5.barcodes.join("\n") + "\n"));
    await Deno.writeFile(
      join(mex, "features.tsv.gz"),
      gz(h5.geneIds.map((id, j) => `${id}\t${h5.genes[j]}\tGene Expression`).join("\n") + "\n"),
    );
    const ds = await readVisium(dir, { id: "V1" });
    const s = ds.sections[0];
    assertEquals([s.id, s.spots.length, s.imageScale], ["V1", 99, 0.045004502]);
    assertEquals(
      s.spots.map((p) => [...p.counts!]),
      h5.barcodes.slice(1).map((_, b) => [...h5.values.subarray((b + 1) * g, (b + 2) * g)]),
    );
    assertEquals(ds.warnings.map((w) => [w.code, w.count]), [["unjoined-spots", 1], [
      "spots-without-counts",
      1,
    ]]);
    await Deno.remove(join(dir, "spatial", "scalefactors_json.json"));
    await assertRejects(() => readVisium(dir), DatasetError, "expected scalefactors_json.json");
  });
  await withTemp("visium_empty_", async (dir) => {
    await assertRejects(() => readVisium(dir), DatasetError, "expected spatial/tissue_positions.csv");
  });
});

/** A Visium folder of 3 spots with a Matrix Market matrix of the given features (`[id, symbol]`). */
async function tinyVisiumMex(dir: string, features: [string, string][], barcodes = ["A-1", "B-1", "C-1"]) {
  await Deno.mkdir(join(dir, "filtered_feature_bc_matrix"), { recursive: true });
  await Deno.writeTextFile(
    join(dir, "tissue_positions_list.csv"),
    "A-1,1,0,0,10,10\nB-1,1,0,2,10,30\nC-1,1,1,1,30,20\n",
  );
  await Deno.writeTextFile(
    join(dir, "scalefactors_json.json"),
    JSON.stringify({ spot_diameter_fullres: 10, tissue_lowres_scalef: 1 }),
  );
  await Deno.writeFile(join(dir, "tissue_lowres_image.png"), encodePng(40, 40, new Uint8Array(40 * 40 * 3)));
  const mex = join(dir, "filtered_feature_bc_matrix");
  const G = features.length;
  await Deno.writeTextFile(
    join(mex, "matrix.mtx"),
    `%%MatrixMarket matrix coordinate integer general\n${G} ${barcodes.length} ${G}\n` +
      features.map((_, g) => `${g + 1} ${(g % barcodes.length) + 1} ${g + 1}`).join("\n") + "\n",
  );
  await Deno.writeTextFile(join(mex, "barcodes.tsv"), barcodes.join("\n") + "\n");
  await Deno.writeTextFile(join(mex, "features.tsv"), features.map((f) => f.join("\t")).join("\n") + "\n");
}

Deno.test("visium: duplicate gene symbols are made unique as scanpy's var_names_make_unique, with a warning", async () => {
  // anndata.utils.make_index_unique: later duplicates get -1, -2, … skipping names already present.
  assertEquals(makeUnique(["A", "A", "B", "A-1", "A", "C"]).names, ["A", "A-2", "B", "A-1", "A-3", "C"]);
  assertEquals(makeUnique(["X", "Y"]), { names: ["X", "Y"], renamed: [] });
  await withTemp("visium_dups_", async (dir) => {
    const feats: [string, string][] = [["E0", "A"], ["E1", "A"], ["E2", "B"], ["E3", "A-1"], ["E4", "A"]];
    await tinyVisiumMex(dir, feats);
    const ds = await readVisium(dir);
    assertEquals(ds.genes, ["A", "A-2", "B", "A-1", "A-3"]);
    assertEquals(ds.geneIds, ["E0", "E1", "E2", "E3", "E4"]);
    const w = ds.warnings.find((x) => x.code === "duplicate-genes")!;
    assertEquals([
      w.count,
      w.message.includes("A → A-2, A → A-3"),
      w.message.includes("var_names_make_unique"),
    ], [
      2,
      true,
      true,
    ]);
    // Counts stay with their feature: E4 (now A-3) has 5 reads in spot 5 % 3 = B-1.
    assertEquals(ds.sections[0].spots[1].counts![4], 5);
  });
  await withTemp("visium_dup_ids_", async (dir) => {
    await tinyVisiumMex(dir, [["E0", "A"], ["E1", "B"], ["E0", "C"]]);
    const mex = join(dir, "filtered_feature_bc_matrix");
    await assertRejects(
      () => readMex(mex),
      DatasetError,
      `${join(mex, "features.tsv")}: expected each feature id once`,
    );
  });
  await withTemp("visium_dup_barcodes_", async (dir) => {
    await tinyVisiumMex(dir, [["E0", "A"], ["E1", "B"]], ["A-1", "B-1", "A-1"]);
    await assertRejects(() => readVisium(dir), DatasetError, "A-1 (entries 1, 3)");
  });
});

Deno.test("visium: an empty, truncated or non-HDF5 .h5 matrix says so, naming the file", async () => {
  await withTemp("visium_h5_", async (dir) => {
    const f = join(dir, "filtered_feature_bc_matrix.h5");
    await Deno.writeFile(f, new Uint8Array(0));
    await assertRejects(
      () => readH5(f),
      DatasetError,
      `${f}: expected an HDF5 file, found an empty file (0 bytes)`,
    );
    await Deno.writeTextFile(f, "not hdf5 at all");
    await assertRejects(() => readH5(f), DatasetError, "not an HDF5 file");
    const src = sharedData("visium");
    if (!src) return;
    const whole = await Deno.readFile(join(src, "filtered_feature_bc_matrix.h5"));
    await Deno.writeFile(f, whole.subarray(0, 5000));
    await assertRejects(
      () => readH5(f),
      DatasetError,
      `expected ${whole.length} bytes (the HDF5 superblock's end-of-file address), found 5000: the file is truncated`,
    );
    await Deno.writeFile(f, whole.subarray(0, 30));
    await assertRejects(() => readH5(f), DatasetError, "the file is truncated");
  });
});

// ---------------------------------------------------------------------------------------------------------
// HBCIS (synthetic: no real data here)

Deno.test("hbcis: ST-Net's per-spot npz files (ours and numpy's) read into sections", async () => {
  await withTemp("hbcis_", async (root) => {
    const dir = join(root, "HER2_luminal", "BC23450");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(root, "all_genes.txt"), "G1\nG2\nG3\n");
    await Deno.writeFile(join(dir, "BC23450_D1_wsi.tif"), new Uint8Array(8));
    const spot = (x: number, y: number, count: number[], tumor: boolean) =>
      encodeNpz({
        count: { dtype: "i8", shape: [3], data: BigInt64Array.from(count.map(BigInt)) },
        tumor: { dtype: "b1", shape: [], data: new Uint8Array([tumor ? 1 : 0]) },
        pixel: { dtype: "i8", shape: [2], data: new BigInt64Array([BigInt(100 * x), BigInt(90 * y)]) },
        index: { dtype: "i8", shape: [2], data: new BigInt64Array([BigInt(x), BigInt(y)]) },
        patient: { dtype: "U", shape: [1], data: ["BC23450"] },
        section: { dtype: "U", shape: [1], data: ["D1"] },
      }, { compress: true });
    await Deno.writeFile(join(dir, "D1_10_12.npz"), spot(10, 12, [5, 0, 2], true));
    await Deno.writeFile(join(dir, "D1_11_12.npz"), spot(11, 12, [1, 1, 1], false));
    const py = await python(
      `import numpy as np
np.savez_compressed(${
        JSON.stringify(join(dir, "D1_10_13.npz"))
      }, count=np.array([0, 7, 0]), tumor=np.array(True),
  pixel=np.array([1000, 1170]), index=np.array([10, 13]), patient=np.array(['BC23450']), section=np.array(['D1']))
print('ok')`,
      "numpy",
    );
    const ds = await readHbcis(root);
    assertEquals(ds.genes, ["G1", "G2", "G3"]);
    assertEquals(ds.sections.map((s) => [s.id, s.slidePath.endsWith("BC23450_D1_wsi.tif"), s.labelSource]), [
      ["BC23450_D1", true, "npz"],
    ]);
    const spots = ds.sections[0].spots.map((p) => [p.id, p.pixel, p.array, [...p.counts!], p.tumor]);
    const want: unknown[] = [
      ["10x12", [1000, 1080], [10, 12], [5, 0, 2], true],
      ["11x12", [1100, 1080], [11, 12], [1, 1, 1], false],
    ];
    if (py !== null) want.splice(1, 0, ["10x13", [1000, 1170], [10, 13], [0, 7, 0], true]);
    assertEquals(spots, want);
    assertEquals(ds.warnings, []);
    await assertRejects(
      () => readHbcis(root, { genes: ["G1"] }),
      Error,
      "expected 1 counts (one per gene), found 3",
    );
    await Deno.remove(join(dir, "BC23450_D1_wsi.tif"));
    await assertRejects(() => readHbcis(root), DatasetError, "expected the slide of BC23450_D1");
  });
  await withTemp("hbcis_dups_", async (root) => {
    const dir = join(root, "HER2", "P1");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(join(dir, "P1_D1_wsi.tif"), new Uint8Array(8));
    await Deno.writeTextFile(join(root, "all_genes.txt"), "G1\nG2\n\nG1\n");
    await assertRejects(() => readHbcis(root), DatasetError, "G1 (line 1, line 4)");
    await assertRejects(
      () => readHbcis(root, { genes: ["G1", "G1"] }),
      DatasetError,
      "G1 (index 0, index 1)",
    );
    await Deno.writeTextFile(join(root, "all_genes.txt"), "G1\nG2\n");
    const npz = (x: number, y: number) =>
      encodeNpz({
        count: { dtype: "i8", shape: [2], data: new BigInt64Array([1n, 2n]) },
        pixel: { dtype: "i8", shape: [2], data: new BigInt64Array([BigInt(x), BigInt(y)]) },
        index: { dtype: "i8", shape: [2], data: new BigInt64Array([BigInt(x), BigInt(y)]) },
      });
    await Deno.writeFile(join(dir, "D1_1_1.npz"), npz(1, 1));
    await Deno.writeFile(join(dir, "D1_2_1.npz"), npz(1, 1)); // its index says 1 1: the same spot
    await assertRejects(
      () => readHbcis(root),
      DatasetError,
      `${join(dir, "D1_2_1.npz")}: expected one file per spot, found spot 1x1 of section P1_D1 also in ${
        join(dir, "D1_1_1.npz")
      }`,
    );
  });
  await withTemp("hbcis_empty_", async (root) => {
    await Deno.writeTextFile(join(root, "all_genes.txt"), "G1\n");
    await assertRejects(() => readHbcis(root), DatasetError, "expected spot files");
    await Deno.remove(join(root, "all_genes.txt"));
    await assertRejects(() => readHbcis(root), DatasetError, "expected gene names");
  });
});

// ---------------------------------------------------------------------------------------------------------
// Genes

Deno.test("log1pNormalize is log1p(1e4 · count / spot total); an empty spot gives zeros", () => {
  const got = log1pNormalize(new Float32Array([1, 3, 0]));
  assertEquals([...got], [Math.fround(Math.log1p(2500)), Math.fround(Math.log1p(7500)), 0]);
  assertEquals([...log1pNormalize(new Float32Array(3))], [0, 0, 0]);
});

const spot = (section: string, x: number, y: number, counts?: number[]): Spot => ({
  id: `${x}x${y}`,
  section,
  pixel: [x * 100, y * 100],
  array: [x, y],
  counts: counts && new Float32Array(counts),
});

Deno.test("selectTargetGenes takes the top N by mean count, or a list whose missing genes are reported", () => {
  const genes = ["A", "B", "C", "D"];
  const spots = [spot("s", 0, 0, [1, 5, 5, 0]), spot("s", 1, 0, [1, 3, 3, 9])];
  const top = selectTargetGenes(spots, genes, { n: 2 });
  // Means A 1, B 4, C 4, D 4.5: D first, then B (ties keep the gene order).
  assertEquals([top.target, top.targetIndex, top.auxiliary, [...top.mean]], [["D", "B"], [3, 1], ["A", "C"], [
    1,
    4,
    4,
    4.5,
  ]]);
  assertEquals(selectTargetGenes(spots, genes, { n: 2, exclude: ["D"] }).target, ["B", "C"]);
  const listed = selectTargetGenes(spots, genes, { list: ["C", "Z", "A"] });
  assertEquals([listed.target, listed.auxiliary, listed.missing], [["C", "A"], ["B", "D"], ["Z"]]);
  let err = "";
  try {
    selectTargetGenes([spot("s", 0, 0)], genes);
  } catch (e) {
    err = (e as Error).message;
  }
  assertEquals(err, "Cannot select genes: spot s/0x0 has no counts, expected 4");
  assertThrows(
    () => selectTargetGenes(spots, genes, { list: ["C", "A", "C"] }),
    RangeError,
    "the target gene list names 1 gene(s) more than once: C (2×)",
  );
  assertThrows(
    () => selectTargetGenes(spots, ["A", "B", "A", "D"], { n: 2 }),
    RangeError,
    "the dataset's gene list names 1 gene(s) more than once: A (2×)",
  );
});

Deno.test("selectTargetGenes on her2st picks 250 targets over training sections C2–C4", async () => {
  const root = sharedData("her2st");
  if (!root) return;
  const ds = await readHer2st(root);
  const train = ds.sections.slice(0, 3).flatMap((s) => s.spots);
  const sel = selectTargetGenes(train, ds.genes);
  assertEquals([sel.target.length, sel.auxiliary.length], [250, ds.genes.length - 250]);
  for (let k = 1; k < 250; k++) {
    assertEquals(sel.mean[sel.targetIndex[k - 1]] >= sel.mean[sel.targetIndex[k]], true);
  }
  const worst = sel.mean[sel.targetIndex[249]];
  assertEquals(sel.auxiliaryIndex.every((j) => sel.mean[j] <= worst), true);
});

Deno.test("gridNeighbours: 8 on a square ST grid, 6 on Visium's hex grid, never across sections", () => {
  // 3 × 3 square grid plus a spot of another section at the centre's position.
  const sq = [...Array(9).keys()].map((i) => spot("A", i % 3, Math.floor(i / 3)));
  sq.push(spot("B", 1, 1));
  const nb = gridNeighbours(sq);
  assertEquals(nb[4], [0, 1, 2, 3, 5, 6, 7, 8]);
  assertEquals(nb[0], [1, 3, 4]);
  assertEquals(nb[9], []);
  // Hex: array = [col, row]; even rows use even columns, odd rows odd columns.
  const hex = [[2, 0], [4, 0], [1, 1], [3, 1], [5, 1], [2, 2], [4, 2], [3, 0]].map(([c, r]) =>
    spot("V", c, r)
  );
  const hn = gridNeighbours(hex, { grid: "hex" });
  assertEquals(hn[3], [2, 4, 0, 1, 5, 6]); // (3,1): (1,1) (5,1) (2,0) (4,0) (2,2) (4,2)
  assertEquals(hn[1], [0, 3, 4]); // (4,0): (2,0) (3,1) (5,1)
  assertEquals(hn[7], []); // (3,0) sits off the lattice: (2,0) and (4,0) are ±1 column, not neighbours
});

Deno.test("imageSize reads JPEG and PNG headers without decoding", async () => {
  const root = sharedData("visium");
  if (root) assertEquals(await imageSize(join(root, "tissue_lowres_image.png")), [600, 600]);
  await withTemp("img_", async (dir) => {
    await Deno.writeFile(join(dir, "a.jpg"), jpegHeader(300, 7));
    assertEquals(await imageSize(join(dir, "a.jpg")), [300, 7]);
    await Deno.writeTextFile(join(dir, "b.txt"), "not an image, but long enough to look at");
    assertEquals(await imageSize(join(dir, "b.txt")), null);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Visium: a hires / lowres image on its own (predict-slide, extract-patches)

Deno.test("visium image: the shared lowres / hires images get their scale factor, spot size and mpp", async () => {
  const dir = sharedData("visium");
  if (!dir) return;
  const low = await visiumImage(join(dir, "tissue_lowres_image.png"));
  assertEquals([low!.kind, low!.scale, low!.scalefactors.file], [
    "lowres",
    0.045004502,
    join(dir, "scalefactors_json.json"),
  ]);
  assertEquals(low!.spotDiameter, 89.42751063343188 * 0.045004502);
  assertEquals(low!.mpp!.source, "scalefactors");
  assertEquals(low!.mpp!.x, 55 / 89.42751063343188 / 0.045004502);
  assertEquals(low!.mpp!.y, low!.mpp!.x);
  assertEquals((await visiumImage(join(dir, "tissue_hires_image.png")))!.scale, 0.150015);
  // Another image in that folder is a full-resolution image: nothing to scale.
  assertEquals(await visiumImage(join(dir, "test_img.jpg")), null);
});

Deno.test("visium image: kind by name, scale factors beside it or given, and errors that name the file", async () => {
  assertEquals(
    ["tissue_hires_image.png", "S1_tissue_lowres_image.png", "LOWRES.png", "img.png", "hiresolution.png"]
      .map((n) => visiumImageKind(join("spatial", n))),
    ["hires", "lowres", "lowres", null, null],
  );
  await withTemp("visium_image_", async (dir) => {
    const sf = join(dir, "spatial", "scalefactors_json.json");
    await Deno.mkdir(join(dir, "spatial"));
    await Deno.writeTextFile(sf, JSON.stringify({ tissue_lowres_scalef: 0.5, spot_diameter_fullres: 11 }));
    const low = await visiumImage(join(dir, "spatial", "tissue_lowres_image.png"));
    assertEquals([low!.scale, low!.spotDiameter, low!.mpp!.x], [0.5, 5.5, 10]);
    // Not beside it: none found, unless given.
    const away = join(dir, "tissue_lowres_image.png");
    assertEquals(await visiumImage(away), null);
    assertEquals((await visiumImage(away, { scalefactors: sf }))!.scale, 0.5);
    // A name that says neither hires nor lowres: nothing without --scalefactors, an error with it.
    assertEquals(await visiumImage(join(dir, "spatial", "img.png")), null);
    await assertRejects(
      () => visiumImage(join(dir, "img.png"), { scalefactors: sf }),
      DatasetError,
      `${join(dir, "img.png")}: expected a name that says hires or lowres`,
    );
    // The hires factor is missing; a non-number value; no spot diameter (no mpp); not JSON.
    await assertRejects(
      () => visiumImage(join(dir, "spatial", "tissue_hires_image.png")),
      DatasetError,
      `${sf}: expected tissue_hires_scalef > 0 for tissue_hires_image.png, found none`,
    );
    await Deno.writeTextFile(sf, JSON.stringify({ tissue_lowres_scalef: 0.5, spot_diameter_fullres: "11" }));
    await assertRejects(
      () => readScalefactors(sf),
      DatasetError,
      'expected spot_diameter_fullres to be a number, found "11"',
    );
    await Deno.writeTextFile(sf, JSON.stringify({ tissue_lowres_scalef: 0.25 }));
    const bare = await visiumImage(join(dir, "spatial", "tissue_lowres_image.png"));
    assertEquals([bare!.scale, bare!.spotDiameter, bare!.mpp], [0.25, null, null]);
    await Deno.writeTextFile(sf, "{ tissue_lowres_scalef: 0.5");
    await assertRejects(() => readScalefactors(sf), DatasetError, `${sf}: expected JSON`);
    await Deno.writeTextFile(sf, "[0.5]");
    await assertRejects(() => readScalefactors(sf), DatasetError, "expected a JSON object");
    await assertRejects(() => readScalefactors(join(dir, "none.json")), DatasetError, "expected a file");
  });
});
