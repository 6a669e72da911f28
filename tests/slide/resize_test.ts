import {
  centerBox,
  decodeImage,
  dihedral,
  dihedralCpu,
  HE2GENE_MEAN,
  HE2GENE_STD,
  resizeNormalize,
  uploadImages,
} from "../../slide/mod.ts";
import { dihedralEach } from "../../slide/resize.ts";
import { resizeCpu } from "../../slide/resample.ts";
import { assertClose, assertEquals, assertThrows, gpuTest, rand, sharedData } from "../helpers.ts";
import { FIXTURE, manifest, pattern, type ResizeCase, sha256 } from "./fixture.ts";

async function input(c: ResizeCase): Promise<{ width: number; height: number; data: Uint8Array } | null> {
  if (c.input.pattern) return pattern(...c.input.pattern);
  if (c.input.file) {
    return decodeImage(await Deno.readFile(new URL(c.input.file, FIXTURE)), c.input.file);
  }
  const path = sharedData(c.input.shared!);
  return path ? decodeImage(await Deno.readFile(path), path) : null;
}

function describe(c: ResizeCase): string {
  const src = c.input.pattern ? `pattern ${c.input.pattern.join("×")}` : c.input.file ?? c.input.shared;
  return `${src}${c.box ? ` crop [${c.box}]` : ""} → ${c.size.join("×")}`;
}

/** PIL's uint8 output → (v / 255 − mean) / std, in float64. */
function expectedNormalised(rgb: Uint8Array, w: number, h: number): Float64Array {
  const out = new Float64Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < w * h; i++) {
      out[c * w * h + i] = (rgb[3 * i + c] / 255 - HE2GENE_MEAN[c]) / HE2GENE_STD[c];
    }
  }
  return out;
}

/** Invert the normalisation back to uint8 levels (rounding), to compare with PIL's bytes. */
function toLevels(x: Float32Array, c0: number, w: number, h: number): Uint8Array {
  const out = new Uint8Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < w * h; i++) {
      out[3 * i + c] = Math.round((x[c0 + c * w * h + i] * HE2GENE_STD[c] + HE2GENE_MEAN[c]) * 255);
    }
  }
  return out;
}

Deno.test("resizeCpu equals PIL's crop + BILINEAR resize exactly on every fixture case", async () => {
  for (const c of manifest.resize) {
    const img = await input(c);
    if (!img) continue;
    const out = resizeCpu(img, c.size, { box: c.box ?? undefined });
    assertEquals([out.width, out.height], c.size);
    if (c.full) {
      const want = new Uint8Array(
        await new Response(
          (await Deno.open(new URL(c.full, FIXTURE))).readable.pipeThrough(new DecompressionStream("gzip")),
        ).arrayBuffer(),
      );
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(out.data[i] - want[i]));
      assertEquals(worst, 0, `${describe(c)}: max |CPU − PIL| is ${worst}`);
    }
    assertEquals(await sha256(out.data), c.sha256, `${describe(c)}: CPU resize differs from PIL`);
  }
});

gpuTest("resizeNormalize equals (PIL uint8 / 255 − mean) / std on every fixture case", async (e) => {
  for (const c of manifest.resize) {
    const img = await input(c);
    if (!img) continue;
    const [w, h] = c.size;
    const pil = resizeCpu(img, c.size, { box: c.box ?? undefined }); // equals PIL (previous test)
    assertEquals(await sha256(pil.data), c.sha256, describe(c));
    const x = await e.scope(() => {
      const src = uploadImages(e, [img]);
      return resizeNormalize(src, { size: [h, w], boxes: c.box ? [c.box] : undefined });
    }).toArray();
    assertEquals(x.length, 3 * w * h);
    assertClose(x, expectedNormalised(pil.data, w, h), { rtol: 0, atol: 1e-6 }, describe(c));
    assertEquals(await sha256(toLevels(x, 0, w, h)), c.sha256, `${describe(c)}: GPU levels differ from PIL`);
  }
});

gpuTest("resizeNormalize batches images × boxes, image-major, including crops past the border", async (e) => {
  const a = pattern(150, 150);
  const b = { ...a, data: a.data.map((v) => 255 - v) };
  const boxes = [centerBox(150, 150, 75), centerBox(150, 150, 225), [0, 0, 75, 75] as const];
  // 225×225 does not share the 75×75 size: one call per crop size.
  for (const group of [[boxes[0], boxes[2]], [boxes[1]]]) {
    const x = await e.scope(() => resizeNormalize(uploadImages(e, [a, b]), { boxes: group, images: [1, 0] }))
      .toArray();
    assertEquals(x.length, 2 * group.length * 3 * 224 * 224);
    let item = 0;
    for (const img of [b, a]) {
      for (const box of group) {
        const want = resizeCpu(img, [224, 224], { box });
        const got = toLevels(x, item * 3 * 224 * 224, 224, 224);
        assertEquals(await sha256(got), await sha256(want.data), `item ${item} box [${box}]`);
        item++;
      }
    }
  }
});

gpuTest("resizeNormalize on the four exps patches in one batch matches PIL", async (e) => {
  const cases = manifest.resize.filter((c) => c.input.shared && !c.box);
  const imgs: { width: number; height: number; data: Uint8Array }[] = [];
  for (const c of cases) {
    const img = await input(c);
    if (!img) return;
    imgs.push(img);
  }
  const x = await e.scope(() => resizeNormalize(uploadImages(e, imgs))).toArray();
  for (let i = 0; i < cases.length; i++) {
    const got = toLevels(x, i * 3 * 224 * 224, 224, 224);
    assertEquals(await sha256(got), cases[i].sha256, `${cases[i].input.shared}`);
  }
});

gpuTest(
  "dihedral k = hflip | vflip << 1 | rot90 << 2 matches torchvision flips and torch.rot90",
  async (e) => {
    // x[0, 0] = [[1, 2, 3], [4, 5, 6]] (H = 2, W = 3)
    const x = [1, 2, 3, 4, 5, 6];
    const want: Record<number, number[]> = {
      0: [1, 2, 3, 4, 5, 6],
      1: [3, 2, 1, 6, 5, 4], // hflip: reverse width
      2: [4, 5, 6, 1, 2, 3], // vflip: reverse height
      3: [6, 5, 4, 3, 2, 1], // rot180
      4: [3, 6, 2, 5, 1, 4], // torch.rot90(x, 1, [2, 3]) → [[3, 6], [2, 5], [1, 4]]
      5: [1, 4, 2, 5, 3, 6], // rot90(hflip(x)) = transpose
      6: [6, 3, 5, 2, 4, 1], // rot90(vflip(x)) = anti-transpose
      7: [4, 1, 5, 2, 6, 3], // rot270 = torch.rot90(x, -1, [2, 3])
    };
    const t = e.tensor(new Float32Array(x), [1, 1, 2, 3]);
    for (let k = 0; k < 8; k++) {
      assertEquals(Array.from(dihedralCpu(x, [1, 1, 2, 3], k)), want[k], `CPU k=${k}`);
      const y = dihedral(t, k);
      assertEquals(y.shape, k < 4 ? [1, 1, 2, 3] : [1, 1, 3, 2]);
      assertEquals(Array.from(await y.toArray()), want[k], `GPU k=${k}`);
      y.dispose();
    }
    t.dispose();
  },
);

gpuTest("dihedral matches its CPU reference on a batch with odd sizes", async (e) => {
  const shape = [3, 2, 7, 5];
  const data = rand(3 * 2 * 7 * 5, 9);
  const t = e.tensor(data, shape);
  for (let k = 0; k < 8; k++) {
    const y = dihedral(t, k);
    assertEquals(Array.from(await y.toArray()), Array.from(dihedralCpu(data, shape, k)), `k=${k}`);
    y.dispose();
  }
  t.dispose();
  assertThrows(() => dihedral(t, 8), RangeError, "k must be");
});

gpuTest("resizeNormalize rejects mixed crop sizes, bad indices and unpacked input", (e) => {
  const src = uploadImages(e, [pattern(20, 10)]);
  assertThrows(() => resizeNormalize(src, { boxes: [[0, 0, 5, 5], [0, 0, 6, 5]] }), RangeError, "one size");
  assertThrows(() => resizeNormalize(src, { images: [1] }), RangeError, "image index 1");
  assertThrows(() => resizeNormalize(src, { boxes: [[5, 0, 5, 5]] }), RangeError, "right > left");
  assertThrows(() => resizeNormalize(src.reshape([200]), {}), RangeError, "[M, H, W]");
  assertThrows(() => uploadImages(e, [pattern(20, 10), pattern(10, 20)]), RangeError, "different sizes");
  src.dispose();
});

Deno.test("centerBox places crops as torchvision's CenterCrop", () => {
  assertEquals(centerBox(150, 150, 75), [38, 38, 113, 113]); // round(37.5) = 38 (half to even)
  assertEquals(centerBox(150, 150, 225), [-38, -38, 187, 187]); // round(-37.5) = -38
  assertEquals(centerBox(300, 300, 225), [38, 38, 263, 263]);
  assertEquals(centerBox(151, 150, 75, 74), [38, 38, 113, 112]);
});

gpuTest("dihedralEach applies each sample's own symmetry", async (e) => {
  const shape = [8, 3, 5, 5];
  const data = rand(8 * 75, 17);
  const ks = [3, 0, 7, 1, 4, 6, 2, 5];
  const y = await dihedralEach(e.tensor(data, shape), ks).toArray();
  ks.forEach((k, n) => {
    const one = dihedralCpu(data.subarray(n * 75, (n + 1) * 75), [1, 3, 5, 5], k);
    assertEquals(Array.from(y.subarray(n * 75, (n + 1) * 75)), Array.from(one), `sample ${n} k=${k}`);
  });
});
