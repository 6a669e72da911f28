import { crc32 } from "node:zlib";
import { decodeImage, ImageDecodeError } from "../../slide/mod.ts";
import { encodePng } from "../../slide/png.ts";
import { encodeRgbTiff } from "../../slide/tiff_write.ts";
import { assertEquals, assertThrows, sharedData } from "../helpers.ts";
import { FIXTURE, manifest, sha256 } from "./fixture.ts";

for (const c of manifest.decode.filter((c) => c.file)) {
  Deno.test(`decodeImage reads ${c.file} (PIL mode ${c.mode}) as PIL's convert("RGB")`, async () => {
    const name = c.file!;
    const img = decodeImage(await Deno.readFile(new URL(name, FIXTURE)), name);
    assertEquals([img.width, img.height, img.channels], [c.width, c.height, 3]);
    assertEquals(img.data.length, c.width * c.height * 3);
    if (!c.lossy) {
      assertEquals(await sha256(img.data), c.sha256, `${name}: decoded RGB differs from PIL's`);
      assertEquals(img.warnings, []);
      return;
    }
    // JPEG files and JPEG-in-TIFF (compression 7) decode with libjpeg-turbo, PIL's own decoder: exact too
    // (the fixture stores PIL's pixels whole, as lossy files get no hash in the manifest).
    const want = await Deno.readFile(new URL(name + ".rgb", FIXTURE));
    assertEquals(img.data, want, `${name}: decoded RGB differs from PIL's`);
    assertEquals(img.warnings, []);
  });
}

Deno.test("decodeImage reads the exps patches as 150×150 RGB equal to PIL's", async () => {
  const cases = manifest.decode.filter((c) => c.shared);
  assertEquals(cases.length, 4);
  for (const c of cases) {
    const path = sharedData(c.shared!);
    if (!path) return;
    const img = decodeImage(await Deno.readFile(path), path);
    assertEquals([img.width, img.height], [150, 150]);
    assertEquals(await sha256(img.data), c.sha256, `${c.shared}: decoded RGB differs from PIL's`);
    assertEquals(img.warnings, []);
  }
});

Deno.test("decodeImage names the file when it is not an image", () => {
  const e = assertThrows(
    () => decodeImage(new TextEncoder().encode("hello, world"), "notes.txt"),
    ImageDecodeError,
    "notes.txt",
  );
  if (!e.message.includes("signature")) throw new Error(`unexpected message: ${e.message}`);
});

Deno.test("decodeImage names the file when a PNG or TIFF is truncated", async () => {
  for (const name of ["rgb.png", "rgb_lzw.tif", "he.jpg"]) {
    const bytes = await Deno.readFile(new URL(name, FIXTURE));
    assertThrows(() => decodeImage(bytes.subarray(0, 40), `cut-${name}`), ImageDecodeError, `cut-${name}`);
  }
  assertThrows(() => decodeImage(new Uint8Array(0), "empty.tif"), ImageDecodeError, "empty.tif");
});

// ------------------------------------------------------------------ truncated and corrupt files (issue 12)

/** A 150 × 150 RGB test image. */
const RGB = Uint8Array.from({ length: 150 * 150 * 3 }, (_, i) => (i * 7 + (i >> 9)) % 256);

/** The byte offset of tag `tag`'s value field in the first IFD of a little-endian TIFF. */
function tagValueAt(b: Uint8Array, tag: number): number {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const ifd = v.getUint32(4, true), n = v.getUint16(ifd, true);
  for (let i = 0; i < n; i++) if (v.getUint16(ifd + 2 + 12 * i, true) === tag) return ifd + 2 + 12 * i + 8;
  throw new Error(`no tag ${tag}`);
}

function refused(bytes: Uint8Array, name: string, ...says: string[]): void {
  const e = assertThrows(() => decodeImage(bytes, name), ImageDecodeError, name);
  for (const s of says) if (!e.message.includes(s)) throw new Error(`"${s}" not in: ${e.message}`);
  if (/:\s*$/.test(e.message)) throw new Error(`the message ends in a bare colon: ${e.message}`);
}

Deno.test("decodeImage refuses a TIFF whose strips are cut short or missing, naming the file and offset", async () => {
  const tif = encodeRgbTiff(150, 150, RGB);
  assertEquals(decodeImage(tif, "whole.tif").data, RGB);
  // Uncompressed, cut anywhere: in the pixels (one byte short, or most of them), in the IFD.
  refused(tif.subarray(0, tif.length - 1), "cut1.tif", "strip 0", "byte offset 140", "truncated");
  refused(tif.subarray(0, 5000), "cut5000.tif", "strip 0", "truncated");
  refused(tif.subarray(0, 100), "cut100.tif", "IFD 0", "truncated");
  refused(tif.subarray(0, 6), "cut6.tif", "header", "truncated");
  // A byte count shorter than the strip's rows, with the file whole.
  const short = tif.slice();
  new DataView(short.buffer).setUint32(tagValueAt(short, 279), 150 * 150 * 3 - 450, true);
  refused(short, "short.tif", "strip 0 holds 67050 bytes", "67500");
  // Fewer strips than the image needs (RowsPerStrip 10 → 15 strips, one listed).
  const few = tif.slice();
  new DataView(few.buffer).setUint32(tagValueAt(few, 278), 10, true);
  refused(few, "few.tif", "lists 1 strips", "needs 15");
  // LZW: a strip whose compressed data stop early decompresses to fewer bytes than its rows need.
  const lzw = (await Deno.readFile(new URL("rgb_lzw.tif", FIXTURE))).slice();
  const at = tagValueAt(lzw, 279), v = new DataView(lzw.buffer);
  const counts = v.getUint32(at - 4, true) === 1 ? at : v.getUint32(at, true);
  v.setUint32(counts, Math.floor(v.getUint32(counts, true) / 2), true);
  refused(lzw, "short_lzw.tif", "strip 0", "LZW", "decompresses to");
});

Deno.test("decodeImage refuses a TIFF whose IFD chain loops or whose Exif IFD lies past its end", () => {
  const tif = encodeRgbTiff(150, 150, RGB);
  new DataView(tif.buffer).setUint32(8 + 2 + 10 * 12, 8, true); // the next IFD is this one
  refused(tif, "loop.tif", "loops back to byte offset 8");
  // An Exif IFD (tag 34665, in place of PlanarConfiguration) past the end of the file.
  const exif = encodeRgbTiff(150, 150, RGB), v = new DataView(exif.buffer), entry = tagValueAt(exif, 284) - 8;
  v.setUint16(entry, 34665, true);
  v.setUint16(entry + 2, 4, true);
  v.setUint32(entry + 8, exif.length + 100, true);
  refused(exif, "exif.tif", "sub-IFD 0 of tag 34665", "truncated");
});

Deno.test("decodeImage refuses a PNG cut short, with a bad CRC, no palette or corrupt data, saying why", () => {
  const png = encodePng(150, 150, RGB);
  assertEquals(decodeImage(png, "whole.png").data, RGB);
  refused(png.subarray(0, png.length - 1), "cut1.png", "before its IEND", "truncated");
  refused(png.subarray(0, png.length >> 1), "half.png", "IDAT", "byte offset 33", "truncated");
  refused(png.subarray(0, 20), "cut20.png", "IHDR", "truncated");
  const chunk = (b: Uint8Array, at: number, fix: (data: Uint8Array) => void) => {
    const v = new DataView(b.buffer), len = v.getUint32(at);
    fix(b.subarray(at + 8, at + 8 + len));
    v.setUint32(at + 8 + len, crc32(b.subarray(at + 4, at + 8 + len)) >>> 0);
  };
  const crc = png.slice();
  crc[50] ^= 1; // a byte of the image data
  refused(crc, "crc.png", "IDAT", "CRC");
  // Valid chunks, garbage image data: fast-png's own message is "Error while decompressing the data:".
  const garbage = png.slice();
  chunk(garbage, 33, (d) => d.fill(7));
  refused(garbage, "garbage.png", "do not decompress", "incorrect header check");
  // A palette image (colour type 3) without PLTE used to decode as black.
  const pal = png.slice();
  chunk(pal, 8, (d) => (d[9] = 3));
  refused(pal, "palette.png", "no palette (PLTE chunk)");
  // Fewer scanlines than the header says.
  const tall = png.slice();
  chunk(tall, 8, (d) => new DataView(d.buffer, d.byteOffset).setUint32(4, 151));
  refused(tall, "tall.png", "decompress to 67650 bytes", "need 68101");
});
