import { decodeImage, ImageDecodeError } from "../../slide/mod.ts";
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
