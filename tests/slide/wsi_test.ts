/**
 * Whole-slide reading against openslide / PIL (tests/fixtures/wsi, written by make_reference.py from the
 * files in ../shared/data), plus hand-built TIFF / BigTIFF files for layouts the shared files lack.
 *
 * JPEG data must equal openslide's and PIL's exactly: all three decode with libjpeg-turbo (ours compiled to
 * WebAssembly) with the same IDCT (islow) and chroma upsampling (fancy). This covers Aperio's RGB tiles
 * (a wrong colour conversion, YCbCr applied to RGB data, is off by tens of levels) and the her2st JPEG
 * (4:2:0). Lossless data must be exact too.
 */
import { AssertionError } from "node:assert";
import { gunzipSync } from "node:zlib";
import { aperioMpp, omeMpp, openSlide, SlideError, type SlideMpp } from "../../slide/wsi.ts";
import { decompress, num, nums, openFileSource, readTiff, undoPredictor } from "../../slide/tiff.ts";
import { encodeRgbTiff, type RgbTiffOptions } from "../../slide/tiff_write.ts";
import { decodeImage } from "../../slide/decode.ts";
import { assertEquals, assertRejects, sharedData } from "../helpers.ts";

/** Mean |ours − libjpeg-turbo| allowed over a crop, in 8-bit levels: none (the same decoder). */
const JPEG_MAD = 0;
/** Largest single-sample |ours − libjpeg-turbo| allowed, in 8-bit levels. */
const JPEG_MAX = 0;

const FIX = new URL("../fixtures/wsi/", import.meta.url);
interface Crop {
  name: string;
  level: number;
  x: number;
  y: number;
  w: number;
  h: number;
}
const manifest: {
  svs: { file: string; levels: number[][]; mpp: number; crops: Crop[] };
  pyramid: { file: string; levels: number[][]; crops: Crop[] };
  her2st: { file: string; size: number[]; crops: Crop[] };
} = JSON.parse(await Deno.readTextFile(new URL("manifest.json", FIX)));

async function reference(name: string): Promise<Uint8Array> {
  return new Uint8Array(gunzipSync(await Deno.readFile(new URL(`${name}.rgb.gz`, FIX))));
}

/** Compare the pixels of `got` that lie inside `[0, iw) × [0, ih)` of the crop with the reference. */
function compareInside(
  got: Uint8Array,
  want: Uint8Array,
  c: Crop,
  iw: number,
  ih: number,
): { mad: number; max: number; mean: number[] } {
  let sum = 0, max = 0, n = 0;
  const mean = [0, 0, 0];
  for (let y = 0; y < Math.min(c.h, ih); y++) {
    for (let x = 0; x < Math.min(c.w, iw); x++) {
      for (let ch = 0; ch < 3; ch++) {
        const i = (y * c.w + x) * 3 + ch;
        const d = Math.abs(got[i] - want[i]);
        sum += d;
        if (d > max) max = d;
        mean[ch] += got[i];
      }
      n++;
    }
  }
  return { mad: sum / (3 * n), max, mean: mean.map((m) => m / n) };
}

function assert(cond: boolean, message: string): void {
  if (!cond) throw new AssertionError({ message });
}

Deno.test("openSlide reads CMU-1-Small-Region.svs as one level of 240 × 240 JPEG tiles at MPP 0.499", async () => {
  const path = sharedData(manifest.svs.file);
  if (!path) return;
  const slide = await openSlide(path);
  try {
    assertEquals(slide.format, "tiff");
    // The thumbnail (JPEG strip), the LZW label and the JPEG macro are not levels.
    assertEquals(slide.levels, [{
      width: 2220,
      height: 2967,
      downsample: 1,
      tileWidth: 240,
      tileHeight: 240,
    }]);
    assertEquals(slide.levels.map((l) => [l.width, l.height]), manifest.svs.levels);
    assertEquals(slide.mpp, manifest.svs.mpp);
  } finally {
    slide.close();
  }
});

Deno.test("SVS regions match openslide within the JPEG tolerance, and tissue is H&E-coloured, not magenta", async () => {
  const path = sharedData(manifest.svs.file);
  if (!path) return;
  const slide = await openSlide(path);
  try {
    const { width: W, height: H } = slide.levels[0];
    for (const c of manifest.svs.crops) {
      const r = await slide.readRegion(c.level, c.x, c.y, c.w, c.h);
      const iw = W - c.x, ih = H - c.y;
      assertEquals([r.width, r.height, r.outside], [c.w, c.h, iw < c.w || ih < c.h]);
      const { mad, max, mean } = compareInside(r.data, await reference(c.name), c, iw, ih);
      assert(
        mad <= JPEG_MAD && max <= JPEG_MAX,
        `${c.name}: mean |diff| ${mad.toFixed(3)} (≤ ${JPEG_MAD}), max ${max} (≤ ${JPEG_MAX})`,
      );
      console.log(`${c.name}: mean |ours − openslide| ${mad.toFixed(3)}, max ${max}`);
      if (c.name !== "svs_corner") {
        // Eosin pink / haematoxylin purple: green lowest, red and blue well above it.
        const [R, G, B] = mean;
        assert(G + 20 < R && G + 20 < B, `${c.name}: mean RGB ${mean.map(Math.round)} is not H&E-like`);
      }
    }
  } finally {
    slide.close();
  }
});

Deno.test("readRegion fills pixels past the edges with white and says so", async () => {
  const path = sharedData(manifest.svs.file);
  if (!path) return;
  const slide = await openSlide(path);
  try {
    const { width: W, height: H } = slide.levels[0];
    const r = await slide.readRegion(0, W - 20, H - 17, 64, 64);
    assertEquals(r.outside, true);
    const inside = await slide.readRegion(0, W - 20, H - 17, 20, 17);
    assertEquals(inside.outside, false);
    for (let y = 0; y < 64; y++) {
      for (let x = 0; x < 64; x++) {
        for (let ch = 0; ch < 3; ch++) {
          const v = r.data[(y * 64 + x) * 3 + ch];
          const want = x < 20 && y < 17 ? inside.data[(y * 20 + x) * 3 + ch] : 255;
          if (v !== want) {
            throw new AssertionError({ message: `(${x}, ${y}) channel ${ch}: ${v}, expected ${want}` });
          }
        }
      }
    }
    const left = await slide.readRegion(0, -10, 5, 30, 4); // past the left edge
    assertEquals(left.outside, true);
    assertEquals(Array.from(left.data.subarray(0, 30)), new Array(30).fill(255));
    const away = await slide.readRegion(0, W + 100, -500, 8, 8);
    assertEquals([away.outside, away.data.every((v) => v === 255)], [true, true]);
    await assertRejects(() => slide.readRegion(1, 0, 0, 8, 8), RangeError, "level is 1");
    await assertRejects(() => slide.readRegion(0, 0, 0, 0, 8), RangeError, "expected integers");
  } finally {
    slide.close();
  }
});

Deno.test("small_HE_levels.tiff opens as a 4-level deflate pyramid equal to openslide and PIL", async () => {
  const path = sharedData(manifest.pyramid.file);
  if (!path) return;
  const slide = await openSlide(path);
  try {
    assertEquals(slide.levels.map((l) => [l.width, l.height]), manifest.pyramid.levels);
    assertEquals(slide.levels.map((l) => l.downsample), [1, 2, 4, 300 / 37]);
    assertEquals(slide.levels[0].tileWidth, 64);
    // XResolution 28.34 px/cm with ResolutionUnit centimetre.
    assert(Math.abs(slide.mpp! - 10000 / 28.34) < 0.01, `mpp ${slide.mpp}`);
    for (const c of manifest.pyramid.crops) {
      const r = await slide.readRegion(c.level, c.x, c.y, c.w, c.h);
      assertEquals(r.outside, false);
      const want = await reference(c.name);
      const bad = r.data.findIndex((v, i) => v !== want[i]);
      assertEquals(bad, -1, `${c.name}: first differing byte ${bad}`);
    }
  } finally {
    slide.close();
  }
});

Deno.test("a JPEG 2000 SVS fails at open, naming the compression and the file", async () => {
  const path = sharedData("wsi/tcga-cr-7395-01a-01-ts1.svs");
  if (!path) return;
  const e = await assertRejects(() => openSlide(path), SlideError, "compression 33005 (JPEG 2000");
  assert(e.message.includes(path), e.message);
});

Deno.test("a her2st JPEG opens as one level of PIL's size and matches PIL within the JPEG tolerance", async () => {
  const path = sharedData(manifest.her2st.file);
  if (!path) return;
  const slide = await openSlide(path, { mpp: 1 });
  try {
    assertEquals(slide.format, "jpeg");
    assertEquals(slide.levels, [{
      width: manifest.her2st.size[0],
      height: manifest.her2st.size[1],
      downsample: 1,
    }]);
    assertEquals(slide.mpp, 1);
    for (const c of manifest.her2st.crops) {
      const r = await slide.readRegion(0, c.x, c.y, c.w, c.h);
      const { mad, max, mean } = compareInside(r.data, await reference(c.name), c, c.w, c.h);
      assert(
        mad <= JPEG_MAD && max <= JPEG_MAX,
        `${c.name}: mean |diff| ${mad.toFixed(3)} (≤ ${JPEG_MAD}), max ${max} (≤ ${JPEG_MAX})`,
      );
      console.log(`${c.name}: mean |ours − PIL| ${mad.toFixed(3)}, max ${max}`);
      assert(mean[1] < mean[0] && mean[1] < mean[2], `${c.name}: mean RGB ${mean.map(Math.round)}`);
    }
  } finally {
    slide.close();
  }
});

Deno.test("truncated SVS and JPEG files fail with the file name and a byte offset", async () => {
  const svs = sharedData(manifest.svs.file);
  const jpg = sharedData(manifest.her2st.file);
  if (!svs || !jpg) return;
  const dir = await Deno.makeTempDir({ prefix: "wsi_test_" });
  try {
    for (
      const [src, frac, name] of [[svs, 0.5, "cut.svs"], [svs, 0.9, "cut90.svs"], [
        jpg,
        0.6,
        "cut.jpg",
      ]] as const
    ) {
      const bytes = await Deno.readFile(src);
      const cut = `${dir}/${name}`;
      await Deno.writeFile(cut, bytes.subarray(0, Math.floor(bytes.length * frac)));
      const e = await assertRejects(
        async () => {
          const s = await openSlide(cut);
          try {
            const { width, height } = s.levels[0];
            await s.readRegion(0, 0, 0, width, height);
          } finally {
            s.close();
          }
        },
        SlideError,
        "byte offset",
      );
      assert(e.message.includes(cut), e.message);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------------- hand-built TIFF / BigTIFF

/**
 * A minimal RGB TIFF or BigTIFF, little-endian, IFD first and pixel data after it, uncompressed: tiled
 * (`tile` given) or in strips of `rows` rows. Pixels: `pix(x, y, c)`.
 */
function buildTiff(
  w: number,
  h: number,
  opts: { big?: boolean; tile?: number; rows?: number },
  pix: (x: number, y: number, c: number) => number,
): Uint8Array {
  const big = opts.big ?? false, tile = opts.tile;
  const cw = tile ?? w, ch = tile ?? opts.rows ?? h;
  const across = Math.ceil(w / cw), down = Math.ceil(h / ch);
  const chunks: Uint8Array[] = [];
  for (let r = 0; r < down; r++) {
    for (let c = 0; c < across; c++) {
      const rows = tile ? ch : Math.min(ch, h - r * ch);
      const b = new Uint8Array(cw * rows * 3);
      for (let y = 0; y < rows; y++) {
        for (let x = 0; x < cw; x++) {
          for (let k = 0; k < 3; k++) {
            const X = c * cw + x, Y = r * ch + y;
            b[(y * cw + x) * 3 + k] = X < w && Y < h ? pix(X, Y, k) : 0;
          }
        }
      }
      chunks.push(b);
    }
  }
  const n = chunks.length;
  // Entries: [tag, type, values]; type 3 SHORT, 4 LONG, 16 LONG8.
  const offType = big ? 16 : 4, offSize = big ? 8 : 4;
  const entries: [number, number, number[]][] = [
    [256, 4, [w]],
    [257, 4, [h]],
    [258, 3, [8, 8, 8]],
    [259, 3, [1]],
    [262, 3, [2]],
    [277, 3, [3]],
    [284, 3, [1]],
  ];
  if (tile) entries.push([322, 3, [tile]], [323, 3, [tile]]);
  else entries.push([278, 4, [ch]]);
  entries.push([tile ? 324 : 273, offType, new Array(n).fill(0)]);
  entries.push([tile ? 325 : 279, offType, chunks.map((b) => b.length)]);
  entries.sort((a, b) => a[0] - b[0]);
  const head = big ? 16 : 8, entry = big ? 20 : 12, cnt = big ? 8 : 2;
  const ifdSize = cnt + entries.length * entry + offSize;
  const size = (t: number) => t === 3 ? 2 : t === 4 ? 4 : 8;
  let extra = head + ifdSize;
  const extraAt = new Map<number, number>();
  for (const [tag, type, vals] of entries) {
    if (size(type) * vals.length > offSize) {
      extraAt.set(tag, extra);
      extra += size(type) * vals.length;
    }
  }
  const dataOffsets: number[] = [];
  let at = extra;
  for (const b of chunks) {
    dataOffsets.push(at);
    at += b.length;
  }
  entries.find((e) => e[0] === (tile ? 324 : 273))![2] = dataOffsets;
  const out = new Uint8Array(at);
  const v = new DataView(out.buffer);
  const put = (p: number, type: number, x: number) =>
    type === 3
      ? v.setUint16(p, x, true)
      : type === 4
      ? v.setUint32(p, x, true)
      : v.setBigUint64(p, BigInt(x), true);
  out.set([0x49, 0x49]);
  if (big) {
    v.setUint16(2, 43, true);
    v.setUint16(4, 8, true);
    v.setBigUint64(8, BigInt(head), true);
    v.setBigUint64(head, BigInt(entries.length), true);
  } else {
    v.setUint16(2, 42, true);
    v.setUint32(4, head, true);
    v.setUint16(head, entries.length, true);
  }
  entries.forEach(([tag, type, vals], i) => {
    const p = head + cnt + i * entry;
    v.setUint16(p, tag, true);
    v.setUint16(p + 2, type, true);
    if (big) v.setBigUint64(p + 4, BigInt(vals.length), true);
    else v.setUint32(p + 4, vals.length, true);
    const valueAt = p + (big ? 12 : 8);
    const base = extraAt.get(tag) ?? valueAt;
    if (extraAt.has(tag)) put(valueAt, big ? 16 : 4, base);
    vals.forEach((x, j) => put(base + j * size(type), type, x));
  });
  let p = extra;
  for (const b of chunks) {
    out.set(b, p);
    p += b.length;
  }
  return out;
}

const pattern = (x: number, y: number, c: number) => (x * 7 + y * 13 + c * 85) & 255;

Deno.test("tiled BigTIFF and striped TIFF regions read back exactly; a cut tile names its byte offset", async () => {
  const dir = await Deno.makeTempDir({ prefix: "wsi_test_" });
  try {
    const cases = [
      { name: "tiled.btf", big: true, tile: 16 },
      { name: "striped.tif", big: false, rows: 5 },
      { name: "striped.btf", big: true, rows: 7 },
    ];
    for (const c of cases) {
      const file = `${dir}/${c.name}`;
      const bytes = buildTiff(45, 37, c, pattern);
      await Deno.writeFile(file, bytes);
      const slide = await openSlide(file);
      try {
        assertEquals(slide.levels.length, 1);
        assertEquals([slide.levels[0].width, slide.levels[0].height], [45, 37]);
        assertEquals(slide.levels[0].tileWidth, c.tile);
        const r = await slide.readRegion(0, 3, 4, 50, 40);
        for (let y = 0; y < 40; y++) {
          for (let x = 0; x < 50; x++) {
            for (let k = 0; k < 3; k++) {
              const want = x + 3 < 45 && y + 4 < 37 ? pattern(x + 3, y + 4, k) : 255;
              const got = r.data[(y * 50 + x) * 3 + k];
              if (got !== want) {
                throw new AssertionError({
                  message: `${c.name} (${x}, ${y}, ${k}): ${got}, expected ${want}`,
                });
              }
            }
          }
        }
        assertEquals(r.outside, true);
      } finally {
        slide.close();
      }
      // The IFD is at the front, so a cut copy opens and fails when a region reaches the missing data.
      const cut = `${dir}/cut_${c.name}`;
      await Deno.writeFile(cut, bytes.subarray(0, bytes.length - 100));
      const s = await openSlide(cut);
      try {
        await s.readRegion(0, 0, 0, 8, 8);
        const e = await assertRejects(() => s.readRegion(0, 0, 0, 45, 37), SlideError, "byte offset");
        assert(e.message.includes(cut) && e.message.includes("truncated"), e.message);
      } finally {
        s.close();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LZW with the horizontal predictor decodes the SVS label exactly as PIL does", async () => {
  const path = sharedData(manifest.svs.file);
  if (!path) return;
  const src = await openFileSource(path);
  try {
    const ifd = (await readTiff(src)).ifds[2]; // the label: LZW strips, Predictor 2
    const w = num(ifd, 256, 0), h = num(ifd, 257, 0), rps = num(ifd, 278, h);
    const offs = nums(ifd, 273)!, cnts = nums(ifd, 279)!;
    const out = new Uint8Array(w * h * 3);
    for (let i = 0; i < offs.length; i++) {
      const rows = Math.min(rps, h - i * rps);
      const d = decompress(await src.read(offs[i], cnts[i], "strip"), 5, w * rows * 3, `strip ${i}`);
      undoPredictor(d, w, rows, 3, 8, true);
      out.set(d.subarray(0, w * rows * 3), i * rps * w * 3);
    }
    const hash = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", out)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    // sha256 of PIL 9.4's Image.open(svs).seek(2).convert("RGB").tobytes(), 387 × 463.
    assertEquals([w, h, hash], [
      387,
      463,
      "d99082dd23a68f5c988437048de8b3434404e233c6491483650537bc87866fbc",
    ]);
  } finally {
    src.close();
  }
});

// ------------------------------------------------------------------------------------ microns per pixel

const APERIO = "Aperio Image Library v12.0.15\r\n46920x33014 [0,100 46000x32914] (256x256) JPEG/RGB Q=70" +
  "|AppMag = 40|StripeWidth = 2040|ScanScope ID = SS1234|MPP = 0.2520|Left = 25.69|Top = 23.44";
const OME = (attrs: string) =>
  `<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">` +
  `<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="4" SizeY="3" ` +
  `SizeC="3" SizeZ="1" SizeT="1" ${attrs}><TiffData IFD="0"/></Pixels></Image></OME>`;

/** Write a 4 × 3 RGB TIFF with `opts`, open it, and return its resolution (the pixels must survive). */
async function mppOf(opts: RgbTiffOptions, open: { mpp?: number } = {}): Promise<SlideMpp | null> {
  const rgb = Uint8Array.from({ length: 4 * 3 * 3 }, (_, i) => (i * 37) & 255);
  const bytes = encodeRgbTiff(4, 3, rgb, opts);
  assertEquals(Array.from(decodeImage(bytes, "mpp.tif").data), Array.from(rgb));
  const path = await Deno.makeTempFile({ prefix: "he2gene-mpp-", suffix: ".tif" });
  try {
    await Deno.writeFile(path, bytes);
    const slide = await openSlide(path, open);
    slide.close();
    assertEquals(slide.mpp, slide.resolution?.x ?? null);
    return slide.resolution;
  } finally {
    await Deno.remove(path);
  }
}

const close = (got: SlideMpp | null, x: number, y: number, source: string) => {
  assert(got !== null, `expected ${x} × ${y} µm from ${source}, got none`);
  assert(
    Math.abs(got!.x - x) < 1e-9 * x && Math.abs(got!.y - y) < 1e-9 * y && got!.source === source,
    `expected ${x} × ${y} µm from ${source}, got ${JSON.stringify(got)}`,
  );
};

Deno.test("encodeRgbTiff without options keeps the demo patches' layout: IFD at 8, strip at 140", () => {
  const bytes = encodeRgbTiff(2, 2, new Uint8Array(12).fill(7));
  const v = new DataView(bytes.buffer);
  assertEquals([bytes.length, v.getUint32(4, true), v.getUint16(8, true)], [152, 8, 10]);
  assertEquals(v.getUint32(8 + 2 + 5 * 12 + 8, true), 140); // StripOffsets, the sixth entry
  assertEquals(Array.from(bytes.subarray(140)), new Array(12).fill(7));
});

Deno.test("mpp from TIFF X/YResolution: per centimetre, per inch, inch by default; unit 1 has no length", async () => {
  assertEquals(await mppOf({}), null);
  // 40 000 px/cm across, 20 000 down: 0.25 × 0.5 µm.
  const cm = await mppOf({ resolution: { x: 40000, y: 20000, unit: 3 } });
  close(cm, 0.25, 0.5, "tiff");
  assertEquals(cm!.detail, "the TIFF XResolution / YResolution (40000 / 20000 pixels per centimetre)");
  close(await mppOf({ resolution: { x: 101600, y: 101600, unit: 2 } }), 0.25, 0.25, "tiff");
  const noUnit = await mppOf({ resolution: { x: 50800, y: 50800 } });
  close(noUnit, 0.5, 0.5, "tiff");
  assert(noUnit!.detail.includes("no ResolutionUnit: inch as TIFF 6.0 says"), noUnit!.detail);
  assertEquals(await mppOf({ resolution: { x: 40000, y: 40000, unit: 1 } }), null);
  // Non-integer rationals (28.34 px/cm, an image editor's 72 dpi) are written and read exactly.
  close(await mppOf({ resolution: { x: 28.34, y: 28.34, unit: 3 } }), 10000 / 28.34, 10000 / 28.34, "tiff");
});

Deno.test("mpp sources in order of trust: Aperio MPP, then TIFF resolution, then OME-XML; the option wins", async () => {
  const res = { x: 20000, y: 20000, unit: 3 }; // 0.5 µm
  const aperio = await mppOf({ description: APERIO, resolution: res });
  close(aperio, 0.252, 0.252, "aperio");
  assertEquals(aperio!.detail, "the Aperio ImageDescription (MPP = 0.2520)");
  close(
    await mppOf({ description: OME('PhysicalSizeX="0.3" PhysicalSizeY="0.3"'), resolution: res }),
    0.5,
    0.5,
    "tiff",
  );
  // OME-XML where the TIFF tags say nothing usable (no tags, or ResolutionUnit 1), UTF-8 "µm" included.
  const ome = await mppOf({
    description: OME('PhysicalSizeX="0.3" PhysicalSizeXUnit="µm" PhysicalSizeY="400" PhysicalSizeYUnit="nm"'),
  });
  close(ome, 0.3, 0.4, "ome");
  assertEquals(ome!.detail, "OME-XML PhysicalSizeX / PhysicalSizeY (0.3 µm / 400 nm)");
  close(
    await mppOf({ description: OME('PhysicalSizeX="0.3"'), resolution: { x: 1, y: 1, unit: 1 } }),
    0.3,
    0.3,
    "ome",
  );
  const given = await mppOf({ description: APERIO }, { mpp: 2 });
  close(given, 2, 2, "option");
});

Deno.test("aperioMpp reads MPP from an SVS description; none or a non-positive value is null", () => {
  close(aperioMpp(APERIO), 0.252, 0.252, "aperio");
  assertEquals(
    aperioMpp("Aperio Image Library v11.0.37\r\n4443x3567 (256x256) J2K/KDU Q=70|AppMag = 20"),
    null,
  );
  assertEquals(aperioMpp("Aperio Image Library|MPP = 0|AppMag = 20"), null);
  assertEquals(aperioMpp(""), null);
});

Deno.test("omeMpp converts PhysicalSizeX/Y units to µm; Y defaults to X; a unit without length is null", () => {
  close(omeMpp(OME('PhysicalSizeX="0.25"')), 0.25, 0.25, "ome"); // default unit µm, Y as X
  close(
    omeMpp(OME('PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.00026" PhysicalSizeYUnit="mm"')),
    0.25,
    0.26,
    "ome",
  );
  close(
    omeMpp(
      OME('PhysicalSizeX="0.5" PhysicalSizeXUnit="&#181;m" PhysicalSizeY="0.5" PhysicalSizeYUnit="\u03bcm"'),
    ),
    0.5,
    0.5,
    "ome",
  );
  close(omeMpp(OME('PhysicalSizeX="2500" PhysicalSizeXUnit="Å"')), 0.25, 0.25, "ome");
  close(
    omeMpp(`<ome:OME xmlns:ome="x"><ome:Image><ome:Pixels PhysicalSizeX='0.7'/></ome:Image></ome:OME>`),
    0.7,
    0.7,
    "ome",
  );
  assertEquals(omeMpp(OME('PhysicalSizeX="1" PhysicalSizeXUnit="pixel"')), null);
  assertEquals(
    omeMpp(OME('PhysicalSizeX="0.25" PhysicalSizeY="1" PhysicalSizeYUnit="reference frame"')),
    null,
  );
  assertEquals(omeMpp(OME('PhysicalSizeX="-1"')), null);
  assertEquals(omeMpp(OME("")), null);
  assertEquals(omeMpp('<Pixels PhysicalSizeX="0.25"/>'), null); // not OME-XML
  assertEquals(omeMpp(APERIO), null);
});

Deno.test("CMU-1-Small-Region.svs: 0.499 µm per pixel from the Aperio description", async () => {
  const path = sharedData(manifest.svs.file);
  if (!path) return;
  const slide = await openSlide(path);
  slide.close();
  close(slide.resolution, 0.499, 0.499, "aperio");
  assert(slide.resolution!.detail.includes("MPP = 0.4990"), slide.resolution!.detail);
});
