/**
 * Bad inputs of the slide and patch commands (issue 12, items 1, 2, 4, 11 and 12 in part): truncated
 * patches, tilings that lost the slide's edge, duplicate spots and patch names, spot files without spots,
 * folders given as files, and corrupt PNGs. Every input is made here, small; the checkpoint is a TINY model.
 */
import { join } from "node:path";
import { encodePng } from "../../slide/png.ts";
import { encodeRgbTiff } from "../../slide/tiff_write.ts";
import { assertEquals, tinyCheckpoint } from "../helpers.ts";
import { expectRefused, runCli, snapshot, tempDir } from "./harness.ts";

const HE_JPG = new URL("../fixtures/slide/he.jpg", import.meta.url);

/** A GPU-using test (the engine keeps ops pending, so the sanitizers are off). */
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: false, sanitizeResources: false, fn });
}

/** A folder holding a TINY checkpoint, made once for the file. */
let made: Promise<{ dir: string; weights: string }> | null = null;
function setup(): Promise<{ dir: string; weights: string }> {
  return made ??= (async () => {
    const dir = await tempDir("slide");
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"), {
      target: ["A", "B", "C"],
      aux: ["a", "b", "c", "d", "e"],
    });
    return { dir, weights };
  })();
}

/** 150 × 150 RGB with some structure. */
function patchRgb(seed = 1): Uint8Array {
  return Uint8Array.from({ length: 150 * 150 * 3 }, (_, i) => (i * 7 + seed * 31 + (i >> 9)) % 256);
}

/** A new folder under the test folder with the given files. */
async function folder(name: string, files: Record<string, Uint8Array | string>): Promise<string> {
  const { dir } = await setup();
  const d = join(dir, name);
  await Deno.mkdir(d);
  for (const [f, data] of Object.entries(files)) {
    if (typeof data === "string") await Deno.writeTextFile(join(d, f), data);
    else await Deno.writeFile(join(d, f), data);
  }
  return d;
}

/** `predict-patches DIR` with the tiny checkpoint into DIR-out (which must not appear). */
async function predictPatchesArgs(d: string): Promise<string[]> {
  return ["predict-patches", d, "--weights", (await setup()).weights, "--out", `${d}-out`, "--quiet"];
}

/** No line of the message ends in a bare colon (a cause that went missing). */
function noBareColon(stderr: string): void {
  const bad = stderr.split("\n").filter((l) => /:\s*$/.test(l));
  if (bad.length) throw new Error(`a message ends in a bare colon: ${bad.join(" | ")}`);
}

// --------------------------------------------------------------------------------- 1: truncated patches

test("predict-patches refuses a truncated uncompressed TIFF patch, naming it: exit 1, nothing written", async () => {
  const { dir } = await setup();
  const tif = encodeRgbTiff(150, 150, patchRgb());
  const d = await folder("cut-tif", {
    "S_1_1.tif": encodeRgbTiff(150, 150, patchRgb(2)),
    "S_1_2.tif": tif.subarray(0, tif.length - 5000), // the last 33 rows are missing
  });
  await expectRefused({
    args: await predictPatchesArgs(d),
    code: 1,
    names: [join(d, "S_1_2.tif"), "truncated"],
    watch: dir,
  });
});

test("predict-patches refuses a truncated PNG patch (even one byte short), naming it", async () => {
  const { dir } = await setup();
  const png = encodePng(150, 150, patchRgb());
  const d = await folder("cut-png", {
    "S_1_1.png": encodePng(150, 150, patchRgb(2)),
    "S_2_1.png": png.subarray(0, png.length - 1), // the IEND chunk's CRC is cut short
  });
  await expectRefused({
    args: await predictPatchesArgs(d),
    code: 1,
    names: [join(d, "S_2_1.png"), "truncated"],
    watch: dir,
  });
  await Deno.writeFile(join(d, "S_2_1.png"), png.subarray(0, png.length >> 1)); // cut inside the image data
  const r = await expectRefused({
    args: await predictPatchesArgs(d),
    code: 1,
    names: [join(d, "S_2_1.png"), "truncated"],
    watch: dir,
  });
  noBareColon(r.stderr);
});

test("predict-patches refuses a truncated JPEG patch, naming it", async () => {
  const { dir } = await setup();
  const jpg = await Deno.readFile(HE_JPG);
  const d = await folder("cut-jpg", {
    "S_1_1.png": encodePng(150, 150, patchRgb(2)),
    "S_3_1.jpg": jpg.subarray(0, jpg.length >> 1),
  });
  await expectRefused({
    args: await predictPatchesArgs(d),
    code: 1,
    names: [join(d, "S_3_1.jpg"), "truncated"],
    watch: dir,
  });
});

// ---------------------------------------------------------------------------- 11: duplicate patch names

test("predict-patches refuses two patch files with the same name (X.tif and X.png), naming both", async () => {
  const { dir } = await setup();
  const d = await folder("same-stem", {
    "S_1_1.tif": encodeRgbTiff(150, 150, patchRgb(1)),
    "S_1_1.png": encodePng(150, 150, patchRgb(2)),
    "S_1_2.png": encodePng(150, 150, patchRgb(3)),
  });
  await expectRefused({
    args: await predictPatchesArgs(d),
    code: 1,
    names: [join(d, "S_1_1.tif"), join(d, "S_1_1.png"), '"S_1_1"'],
    watch: dir,
  });
});

// -------------------------------------------------------------------------------- 2: tiles at the edge

/** A `size` × `size` PNG, near-white with pink tissue from row `tissueFrom` down (with a little noise). */
function halfTissuePng(size: number, tissueFrom: number): Uint8Array {
  const rgb = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const n = ((x * 131 + y * 71) % 7) - 3;
      rgb.set(
        y >= tissueFrom ? [200 + n, 120 + n, 190 + n] : [240 + n, 238 + n, 242 + n],
        3 * (y * size + x),
      );
    }
  }
  return encodePng(size, size, rgb);
}

test("predict-slide --tile covers the whole slide: 2000 × 2000 with tissue in the bottom half gives 8 tiles of 500 px", async () => {
  const { weights } = await setup();
  const d = await folder("tiles", { "S.png": halfTissuePng(2000, 1000) });
  const out = join(d, "out");
  const r = await runCli([
    "predict-slide",
    join(d, "S.png"),
    "--tile",
    "--tile-px",
    "500",
    "--weights",
    weights,
    "--tta",
    "single",
    "--out",
    out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const rows = (await Deno.readTextFile(join(out, "tumor_pred.csv"))).trim().split("\n").slice(1);
  const names = rows.map((l) => l.split(",")[0]);
  assertEquals(names, [2, 3].flatMap((row) => [0, 1, 2, 3].map((col) => `S_${col}_${row}`)));
  if (!r.stderr.includes("8 of 16 tiles")) throw new Error(`expected "8 of 16 tiles": ${r.stderr}`);
});

test("predict-slide refuses --tile-px below 32 (usage, exit 2) and more tiles than --max-tiles", async () => {
  const { dir, weights } = await setup();
  const d = await folder("tile-limits", {
    "S.png": halfTissuePng(2000, 1000),
    "small.png": halfTissuePng(64, 32),
  });
  const tile = (
    slide: string,
  ) => ["predict-slide", join(d, slide), "--tile", "--weights", weights, "--out", join(d, "out")];
  await expectRefused({
    args: [...tile("S.png"), "--tile-px", "500", "--max-tiles", "5"],
    code: 1,
    names: ["--max-tiles 5", "8 tiles", join(d, "S.png")],
    watch: dir,
  });
  await expectRefused({
    args: [...tile("S.png"), "--max-tiles", "0"],
    code: 2,
    names: ["--max-tiles"],
    watch: dir,
  });
  for (const px of ["16", "31"]) {
    await expectRefused({
      args: [...tile("small.png"), "--tile-px", px],
      code: 2,
      names: ["--tile-px", "32", px],
      watch: dir,
    });
  }
});

// ------------------------------------------------------------------------------ 4: duplicate spot ids

const HER2ST_HEAD = "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected";

test("extract-patches and predict-slide refuse a spot file that lists one spot twice, naming the file and the spot", async () => {
  const { dir, weights } = await setup();
  const d = await folder("dup-spots", {
    "S.png": encodePng(400, 400, new Uint8Array(400 * 400 * 3).fill(200)),
    // Spots 3x5 on lines 2 and 4: one patch file S_3_5.tif for two spots.
    "S_selection.tsv": [
      HER2ST_HEAD,
      "3\t5\t3.1\t5\t100\t100\t1",
      "4\t5\t4\t5\t150\t100\t1",
      "3\t5\t3\t5.2\t200\t200\t1",
      "",
    ].join("\n"),
    // Visium: barcode AAC-1 twice.
    "tissue_positions.csv": [
      "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres",
      "AAA-1,1,0,0,100,100",
      "AAC-1,1,0,2,100,150",
      "AAC-1,1,1,1,150,120",
      "",
    ].join("\n"),
  });
  const slide = join(d, "S.png"), tsv = join(d, "S_selection.tsv"), visium = join(d, "tissue_positions.csv");
  for (const spots of [tsv, visium]) {
    const names = spots === tsv ? [tsv, "3x5", "lines 2, 4"] : [visium, "AAC-1", "lines 3, 4"];
    await expectRefused({
      args: ["extract-patches", slide, "--spots", spots, "--out", join(d, "patches"), "--quiet"],
      code: 1,
      names,
      watch: dir,
    });
    await expectRefused({
      args: [
        "predict-slide",
        slide,
        "--spots",
        spots,
        "--weights",
        weights,
        "--out",
        join(d, "out"),
        "--quiet",
      ],
      code: 1,
      names,
      watch: dir,
    });
  }
});

// ------------------------------------------------------------------- 12: the real cause, naming the file

test("a spot file without spots says why (empty, header only, none selected / in tissue), not 'falls outside'", async () => {
  const { dir, weights } = await setup();
  const d = await folder("no-spots", {
    "S.png": encodePng(400, 400, new Uint8Array(400 * 400 * 3).fill(200)),
    "empty.tsv": "",
    "header.tsv": HER2ST_HEAD + "\n",
    "unselected.tsv": [HER2ST_HEAD, "3\t5\t3\t5\t100\t100\t0", "4\t5\t4\t5\t150\t100\t0", ""].join("\n"),
    "outside.csv": [
      "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres",
      "AAA-1,0,0,0,100,100",
      "",
    ].join("\n"),
  });
  const slide = join(d, "S.png");
  const cases: [string, string][] = [
    ["empty.tsv", "empty"],
    ["header.tsv", "no spot rows"],
    ["unselected.tsv", "selected = 0"],
    ["outside.csv", "in_tissue = 1"],
  ];
  for (const [file, cause] of cases) {
    const spots = join(d, file);
    for (
      const args of [
        ["extract-patches", slide, "--spots", spots, "--out", join(d, "patches"), "--quiet"],
        ["predict-slide", slide, "--spots", spots, "--weights", weights, "--out", join(d, "out"), "--quiet"],
      ]
    ) {
      await expectRefused({ args, code: 1, names: [spots, cause], not: ["falls outside"], watch: dir });
    }
  }
});

test("a folder given as the slide, the spot file or the checkpoint is refused naming its path", async () => {
  const { dir, weights } = await setup();
  const d = await folder("folders", {
    "S.png": encodePng(400, 400, new Uint8Array(400 * 400 * 3).fill(200)),
    "S_selection.tsv": [HER2ST_HEAD, "3\t5\t3\t5\t100\t100\t1", ""].join("\n"),
    "S_1_1.png": encodePng(150, 150, patchRgb()),
  });
  const sub = join(d, "a-folder");
  await Deno.mkdir(sub);
  const slide = join(d, "S.png"), spots = join(d, "S_selection.tsv"), out = join(d, "out");
  const cases = [
    ["predict-slide", sub, "--spots", spots, "--weights", weights, "--out", out],
    ["predict-slide", sub, "--tile", "--tile-px", "100", "--weights", weights, "--out", out],
    ["extract-patches", sub, "--spots", spots, "--out", out],
    ["predict-slide", slide, "--spots", sub, "--weights", weights, "--out", out],
    ["extract-patches", slide, "--spots", sub, "--out", out],
    ["predict-patches", d, "--weights", sub, "--out", out],
    ["predict-slide", slide, "--spots", spots, "--weights", sub, "--out", out],
  ];
  const before = await snapshot(sub);
  for (const args of cases) {
    const r = await expectRefused({
      args: [...args, "--quiet"],
      code: 1,
      names: [sub, "folder"],
      watch: dir,
    });
    noBareColon(r.stderr);
  }
  assertEquals(await snapshot(sub), before);
});

test("a corrupt PNG (patch or slide) is reported with its cause, never a message ending in a colon", async () => {
  const { dir, weights } = await setup();
  // Garbage image data with valid chunk CRCs: fast-png says "Error while decompressing the data:".
  const good = encodePng(150, 150, patchRgb());
  const idat = 33; // signature (8) + IHDR chunk (25)
  const len = new DataView(good.buffer).getUint32(idat);
  const bad = good.slice();
  bad.fill(7, idat + 8, idat + 8 + len);
  const { crc32 } = await import("node:zlib");
  new DataView(bad.buffer).setUint32(idat + 8 + len, crc32(bad.subarray(idat + 4, idat + 8 + len)) >>> 0);
  const d = await folder("corrupt-png", { "S_1_1.png": bad });
  const r1 = await expectRefused({
    args: await predictPatchesArgs(d),
    code: 1,
    names: [join(d, "S_1_1.png"), "do not decompress"],
    watch: dir,
  });
  noBareColon(r1.stderr);
  const r2 = await expectRefused({
    args: [
      "predict-slide",
      join(d, "S_1_1.png"),
      "--tile",
      "--tile-px",
      "50",
      "--weights",
      weights,
      "--out",
      join(d, "out"),
    ],
    code: 1,
    names: [join(d, "S_1_1.png"), "do not decompress"],
    watch: dir,
  });
  noBareColon(r2.stderr);
});

// ------------------------------------------------------------------------------- 11: gene lists

test("a --target-genes list that names a gene twice, or none, is refused by predict-patches", async () => {
  const { dir } = await setup();
  const d = await folder("genes", {
    "S_1_1.png": encodePng(150, 150, patchRgb()),
    "dup.txt": "FASN\nERBB2\n\nFASN\n",
    "empty.txt": "\n",
  });
  for (const [file, why] of [["dup.txt", "FASN (lines 1, 4)"], ["empty.txt", "lists no genes"]]) {
    await expectRefused({
      args: [...await predictPatchesArgs(d), "--target-genes", join(d, file)],
      code: 1,
      names: ["--target-genes", join(d, file), why],
      watch: dir,
    });
  }
});
