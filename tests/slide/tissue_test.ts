import { otsu, saturation, tileNeighbours, tissueMask, tissueTiles } from "../../slide/tissue.ts";
import { decodeImage } from "../../slide/mod.ts";
import { assertEquals, assertThrows, rand, sharedData } from "../helpers.ts";
import { AssertionError } from "node:assert";

function check(ok: boolean, message: string): void {
  if (!ok) throw new AssertionError({ message });
}

/** A pink ellipse (tissue) on near-white, with pixel noise and a few saturated specks off the blob. */
function blob(w: number, h: number) {
  const data = new Uint8Array(w * h * 3);
  const noise = rand(3 * w * h, 7, -6, 6);
  const inside = (x: number, y: number) =>
    ((x - w / 2) / (w * 0.3)) ** 2 + ((y - h / 2) / (h * 0.25)) ** 2 <= 1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, [r, g, b] = noise.subarray(3 * i, 3 * i + 3);
      const px = inside(x, y) ? [200 + r, 120 + g, 190 + b] : [240 + r, 238 + g, 242 + b];
      data.set(px.map((v) => Math.max(0, Math.min(255, Math.round(v)))), 3 * i);
    }
  }
  for (const [x, y] of [[3, 3], [w - 5, 4], [6, h - 6]]) data.set([150, 40, 140], 3 * (y * w + x)); // specks
  return { width: w, height: h, data, inside };
}

Deno.test("otsu splits a bimodal histogram between its modes", () => {
  const hist = new Float64Array(256);
  for (let i = 0; i < 256; i++) {
    hist[i] = 1000 * Math.exp(-(((i - 20) / 6) ** 2)) + 300 * Math.exp(-(((i - 120) / 10) ** 2));
  }
  const t = otsu(hist);
  check(t > 40 && t < 100, `threshold ${t} not between the modes`);
  assertEquals(
    saturation({ width: 2, height: 1, data: new Uint8Array([0, 0, 0, 200, 100, 50]) }),
    new Uint8Array([0, 191]),
  );
});

Deno.test("tissueMask finds a pink blob on white and cleans up specks", () => {
  const b = blob(97, 81);
  const { mask, threshold } = tissueMask(b);
  let agree = 0;
  for (let y = 0; y < b.height; y++) {
    for (let x = 0; x < b.width; x++) agree += +(mask[y * b.width + x] === +b.inside(x, y));
  }
  check(agree / mask.length > 0.99, `mask agrees with the blob on ${agree / mask.length} of the pixels`);
  check(mask[3 * b.width + 3] === 0, "speck survived the opening");
  check(
    threshold > 8 && threshold < 90,
    `threshold ${threshold} not between white (S ≤ ~13) and pink (S ≈ 100)`,
  );
});

Deno.test("tissueTiles keeps the tiles over the blob, with grid coordinates and neighbours", () => {
  const b = blob(97, 81);
  // Level-0 776×648: 12×10 whole tiles of 8×8 thumbnail pixels, and a partial edge column and row.
  const ds = 8, tilePx = 64;
  const { tiles, cols, rows } = tissueTiles({ ...b, downsample: ds }, { tilePx });
  assertEquals([cols, rows], [13, 11]);
  // Ellipse area π·0.3·0.25 ≈ 23.6% of the image: about 28 of 120 tiles.
  check(tiles.length >= 20 && tiles.length <= 36, `${tiles.length} tiles`);
  for (const t of tiles) {
    assertEquals([t.x, t.y], [t.col * tilePx, t.row * tilePx]);
    check(
      b.inside((t.x + tilePx / 2) / ds, (t.y + tilePx / 2) / ds) || t.tissue < 0.8,
      `tile ${t.col},${t.row}`,
    );
  }
  const nb = tileNeighbours(tiles);
  const centre = tiles.findIndex((t) => t.col === 6 && t.row === 5);
  check(centre >= 0 && nb[centre].every((i) => i >= 0), "the centre tile has 8 neighbours");
  check(tiles[nb[centre][4]].col === 7 && tiles[nb[centre][4]].row === 5, "neighbour 4 is to the right");
  assertEquals(tissueTiles({ ...b, downsample: ds }, { tilePx }).tiles, tiles);
  // Tiles smaller than a thumbnail pixel sample the pixel under their centre.
  const fine = tissueTiles({ ...b, downsample: ds }, { tilePx: 4 });
  check(
    Math.abs(fine.tiles.length / (fine.cols * fine.rows) - 0.236) < 0.03,
    `${fine.tiles.length} fine tiles`,
  );
  assertThrows(() => tissueTiles({ ...b, downsample: 0 }, { tilePx }), RangeError, "downsample");
});

Deno.test("tissueTiles on a real Visium low-res H&E image is plausible and deterministic", async () => {
  const path = sharedData("visium/tissue_lowres_image.png");
  if (!path) return;
  const img = decodeImage(await Deno.readFile(path), path);
  const scale = JSON.parse(
    await Deno.readTextFile(path.replace("tissue_lowres_image.png", "scalefactors_json.json")),
  );
  const thumb = { ...img, downsample: 1 / scale.tissue_lowres_scalef };
  const a = tissueTiles(thumb, { tilePx: 224 });
  const frac = a.mask.mask.reduce((s, v) => s + v, 0) / a.mask.mask.length;
  console.log(
    `visium lowres ${img.width}×${img.height}: threshold ${a.threshold}, tissue ${
      (100 * frac).toFixed(1)
    }%, ` +
      `${a.tiles.length} of ${a.cols}×${a.rows} tiles`,
  );
  check(frac > 0.1 && frac < 0.8, `tissue fraction ${frac}`);
  const expected = frac * a.cols * a.rows;
  check(
    a.tiles.length > 0.6 * expected && a.tiles.length < 1.4 * expected,
    `${a.tiles.length} tiles vs ~${expected}`,
  );
  assertEquals(tissueTiles(thumb, { tilePx: 224 }), a);
});

/** A thumbnail of a W0 × H0 slide made as slide thumbnails are (whole `ds` boxes), pink where `tissue`. */
function slideThumb(W0: number, H0: number, ds: number, tissue: (x0: number, y0: number) => boolean) {
  const width = Math.floor(W0 / ds), height = Math.floor(H0 / ds);
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      data.set(
        tissue((x + 0.5) * ds, (y + 0.5) * ds) ? [200, 120, 190] : [240, 238, 242],
        3 * (y * width + x),
      );
    }
  }
  return { width, height, data, downsample: ds };
}

Deno.test("tissueTiles covers the whole slide at level-0 geometry, not the rounded-down thumbnail's", () => {
  // The case: 2000 × 2000, tissue in the bottom half, 500 px tiles; the thumbnail of 62-px boxes
  // is 32 × 32 (1984 level-0 px), which used to lose the last column and row: 3 tiles instead of 8.
  const thumb = slideThumb(2000, 2000, 62, (_x, y) => y >= 1000);
  const t = tissueTiles(thumb, { tilePx: 500, slideWidth: 2000, slideHeight: 2000, cleanup: 0 });
  assertEquals([t.cols, t.rows], [4, 4]);
  const want = [2, 3].flatMap((row) => [0, 1, 2, 3].map((col) => [col, row]));
  assertEquals(t.tiles.map((k) => [k.col, k.row]), want);
  for (const k of t.tiles) assertEquals(k.tissue, 1);
});

const SIZES: [number, number, number, number][] = [
  // level-0 W, H, tile px, thumbnail downsample
  [2000, 2000, 500, 62],
  [2100, 1530, 500, 31],
  [997, 1003, 64, 8],
  [300, 200, 32, 5],
  [1000, 1000, 1000, 100],
];

Deno.test("tissueTiles: each level-0 pixel is in exactly one tile; edge tiles count past the edge as background", () => {
  for (const [W0, H0, tilePx, ds] of SIZES) {
    const thumb = slideThumb(W0, H0, ds, () => true); // tissue everywhere
    const o = { tilePx, slideWidth: W0, slideHeight: H0, minTissueFraction: 0, cleanup: 0 };
    const all = tissueTiles(thumb, o);
    const what = `${W0}×${H0}, ${tilePx} px tiles`;
    assertEquals([all.cols, all.rows], [Math.ceil(W0 / tilePx), Math.ceil(H0 / tilePx)], what);
    assertEquals(all.tiles.length, all.cols * all.rows, what);
    // Tiles are [x, x + tilePx) × [y, y + tilePx) in level-0 pixels: count the tiles over each pixel.
    const cover = new Uint8Array(W0 * H0);
    for (const k of all.tiles) {
      assertEquals([k.x, k.y], [k.col * tilePx, k.row * tilePx], what);
      for (let y = k.y; y < Math.min(H0, k.y + tilePx); y++) {
        for (let x = k.x; x < Math.min(W0, k.x + tilePx); x++) cover[y * W0 + x]++;
      }
    }
    check(cover.every((c) => c === 1), `${what}: a level-0 pixel in no tile or in two`);
    // The tissue fraction of an edge tile is the share of the tile within the slide.
    for (const k of all.tiles) {
      const inside = (Math.min(tilePx, W0 - k.x) * Math.min(tilePx, H0 - k.y)) / (tilePx * tilePx);
      check(
        Math.abs(k.tissue - inside) < 1e-12,
        `${what}: tile ${k.col},${k.row} has ${k.tissue}, not ${inside}`,
      );
    }
  }
  // With the default minimum (0.5) an edge tile is kept when the slide fills at least half of it.
  const thumb = slideThumb(2300, 1530, 31, () => true);
  const kept = tissueTiles(thumb, { tilePx: 500, slideWidth: 2300, slideHeight: 1530, cleanup: 0 });
  assertEquals([kept.cols, kept.rows], [5, 4]); // the last column is 300 px wide (0.6), the last row 30 px (0.06)
  assertEquals(kept.tiles.length, 5 * 3);
  check(kept.tiles.every((k) => k.row < 3), "the 30-px bottom row, mostly past the edge, is dropped");
});
