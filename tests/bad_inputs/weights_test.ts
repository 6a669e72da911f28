/**
 * Bad checkpoints and bad convert paths (issue 12, items 3 and 5): NaN / Inf weights are refused naming the
 * tensor, a network that overflows on an input is refused naming the patch, and `convert` never writes
 * over one of its inputs. Every case checks the exit code, the message and that nothing new is written.
 */
import { join } from "node:path";
import { assertFinitePredictions } from "../../cli/views.ts";
import { encodePng } from "../../slide/png.ts";
import { readSafetensors, type TensorEntry, writeSafetensors } from "../../weights/mod.ts";
import { assertEquals, assertThrows, gpuTest, tinyCheckpoint } from "../helpers.ts";
import { EXPECTED, fixture } from "../weights/fixtures.ts";
import { expectRefused, runCli, snapshot, tempDir } from "./harness.ts";

/** A tiny HE2Gene-Base checkpoint (3 target genes, 5 aux) with `edit` applied to its tensors. */
async function editedCheckpoint(
  path: string,
  edit: (t: Map<string, TensorEntry>) => void = () => {},
): Promise<void> {
  await tinyCheckpoint(path, null);
  const st = await readSafetensors(path);
  const tensors = new Map([...st.tensors].map(([k, t]) => [k, { ...t, bytes: t.bytes.slice() }]));
  edit(tensors);
  await writeSafetensors(path, tensors, { metadata: st.metadata });
}

/** Set every value of an F32 entry. */
function fill(t: Map<string, TensorEntry>, key: string, v: number): void {
  const e = t.get(key);
  if (!e) throw new Error(`no tensor ${key} in ${[...t.keys()]}`);
  new Float32Array(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength / 4).fill(v);
}

/** A folder of two 150 × 150 PNG patches, a previous run's output folder, and a place for checkpoints. */
async function setUp(prefix: string) {
  const dir = await tempDir(prefix);
  const patches = join(dir, "patches"), out = join(dir, "out");
  await Deno.mkdir(patches);
  await Deno.mkdir(out);
  await Deno.writeTextFile(join(out, "target_count_pred.csv"), "from an earlier run\n");
  for (const [i, name] of ["S1_10_12", "S1_11_12"].entries()) {
    const rgb = new Uint8Array(150 * 150 * 3).map((_, j) => (j * (7 + i) + (j >> 9)) % 251);
    await Deno.writeFile(join(patches, `${name}.png`), encodePng(150, 150, rgb));
  }
  return { dir, patches, out };
}

const predict = (patches: string, weights: string, out: string) => [
  "predict-patches",
  patches,
  "--weights",
  weights,
  "--out",
  out,
  "--tta",
  "single",
  "--batch-size",
  "2",
  "--quiet",
];

gpuTest(
  "predict-patches refuses a checkpoint whose conv1.weight is NaN, naming the tensor and the file",
  async () => {
    const { dir, patches, out } = await setUp("nan-weights");
    try {
      const weights = join(dir, "nan.safetensors");
      await editedCheckpoint(weights, (t) => fill(t, "base_model.conv1.weight", NaN));
      await expectRefused({
        args: predict(patches, weights, out),
        code: 1,
        names: [weights, "base_model.conv1.weight", "NaN of"],
        watch: dir,
      });
      // Inf in a batch-norm statistic, too.
      await editedCheckpoint(weights, (t) => fill(t, "base_model.bn1.running_var", Infinity));
      await expectRefused({
        args: predict(patches, weights, out),
        code: 1,
        names: [weights, "base_model.bn1.running_var", "8 Inf"],
        watch: dir,
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "predict-patches refuses outputs that overflow to Inf, naming the patch; nothing is written",
  async () => {
    const { dir, patches, out } = await setUp("overflow");
    try {
      // Finite weights (they pass the load check) whose target head overflows float32 for any positive feature.
      const weights = join(dir, "overflow.safetensors");
      await editedCheckpoint(weights, (t) => {
        fill(t, "fc1.weight", 3e38);
        fill(t, "fc1.bias", 3e38);
      });
      await expectRefused({
        args: predict(patches, weights, out),
        code: 1,
        names: [join(patches, "S1_10_12.png"), "NaN or Inf", "target values"],
        not: ["fc1.weight"],
        watch: dir,
      });
      // The same checkpoint with a sane head predicts (the patches and the rest of the network are fine).
      await editedCheckpoint(weights, (t) => fill(t, "fc1.weight", 0.01));
      const r = await runCli(predict(patches, weights, out));
      assertEquals(r.code, 0, r.stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "predict-slide refuses outputs that overflow to Inf, naming the spot; nothing is written",
  async () => {
    const { dir, out } = await setUp("overflow-slide");
    try {
      const weights = join(dir, "overflow.safetensors");
      await editedCheckpoint(weights, (t) => {
        fill(t, "fc1.weight", 3e38);
        fill(t, "fc1.bias", 3e38);
      });
      const px = new Uint8Array(400 * 400 * 3);
      for (let i = 0; i < 400 * 400; i++) px.set(i % 7 < 3 ? [120, 60, 150] : [230, 170, 200], 3 * i);
      const slide = join(dir, "S1.png"), spots = join(dir, "S1_spots.csv");
      await Deno.writeFile(slide, encodePng(400, 400, px));
      await Deno.writeTextFile(spots, "x,y,pixel_x,pixel_y\n3,4,100,100\n5,6,300,250\n");
      await expectRefused({
        args: [
          "predict-slide",
          slide,
          "--weights",
          weights,
          "--spots",
          spots,
          "--out",
          out,
          "--tta",
          "single",
        ]
          .concat(["--batch-size", "2", "--quiet"]),
        code: 1,
        names: ["Cannot predict spot S1_3_4", "NaN or Inf", "S1_5_6"],
        watch: dir,
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test("a non-finite prediction names its spot, a finite one passes", () => {
  const p = {
    target: new Float32Array([1, 2, 3, 4, NaN, 6]),
    aux: new Float32Array([0, 0, Infinity, 0]),
    tumor: new Float32Array([0.5, 0.5]),
  };
  const e = assertThrows(() => assertFinitePredictions(p, ["spot_a", "spot_b"], "spot"), Error, "spot_b");
  if (!e.message.includes("Cannot predict spot spot_b") || e.message.includes("spot_a")) throw e;
  if (!e.message.includes("1 of 3 target values, 1 of 2 aux values")) throw e;
  p.target[4] = 5;
  p.aux[2] = 1;
  assertFinitePredictions(p, ["spot_a", "spot_b"], "spot");
});

/** A copy of the zip checkpoint fixture in a fresh folder, with its input bytes to compare afterwards. */
async function convertSetUp(prefix: string) {
  const dir = await tempDir(prefix);
  const input = join(dir, "X.pt");
  const bytes = await Deno.readFile(fixture("model_base.pt"));
  await Deno.writeFile(input, bytes);
  return { dir, input, bytes };
}

Deno.test("convert refuses to write over its input: same path, ./ and ../ spellings, symlink, hard link", async () => {
  const { dir, input, bytes } = await convertSetUp("convert-same");
  try {
    await Deno.mkdir(join(dir, "sub"));
    await Deno.symlink(input, join(dir, "sym.pt"));
    await Deno.link(input, join(dir, "hard.pt"));
    const genes = join(dir, "genes.txt");
    await Deno.writeTextFile(genes, "GAPDH\nACTB\nEPCAM\nKRT19\nPTPRC\n");
    for (
      const [output, extra] of [
        [input, []],
        [`${dir}/./X.pt`, []],
        [`${dir}/sub/../X.pt`, []],
        [join(dir, "sym.pt"), []],
        [join(dir, "hard.pt"), []],
        [genes, ["--target-genes", genes]],
      ] as const
    ) {
      await expectRefused({
        args: ["convert", input, output, ...extra],
        code: 2,
        names: [output, output === genes ? genes : input, "would overwrite it"],
        watch: dir,
      });
      assertEquals(await Deno.readFile(input), bytes, `input bytes after convert … ${output}`);
    }
    // Relative spellings, as typed in the folder: `convert X.pt ./X.pt`.
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      await expectRefused({
        args: ["convert", "X.pt", "./X.pt"],
        code: 2,
        names: ["./X.pt", " X.pt"],
        watch: dir,
      });
    } finally {
      Deno.chdir(cwd);
    }
    assertEquals(await Deno.readFile(input), bytes);
    // A new output next to it is fine, and leaves no temporary file behind.
    const before = await snapshot(dir);
    const r = await runCli(["convert", input, join(dir, "sub", "X.safetensors")]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals([...(await snapshot(dir)).keys()].filter((k) => !before.has(k)), ["sub/X.safetensors"]);
    assertEquals(await Deno.readFile(input), bytes);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert refuses a checkpoint with NaN weights, naming the tensor, and writes nothing", async () => {
  const { dir, input, bytes } = await convertSetUp("convert-nan");
  try {
    // Overwrite conv1.weight's stored bytes (the zip entry is not compressed) with float32 NaN.
    const want = EXPECTED["model_base.pt"]["base_model.conv1.weight"];
    const raw = Uint8Array.from(want.hex.match(/../g)!, (h) => parseInt(h, 16));
    const at = indexOf(bytes, raw);
    if (at < 0) throw new Error("conv1.weight's bytes not found in model_base.pt");
    const bad = bytes.slice();
    new DataView(bad.buffer).setUint32(at + 4 * 5, 0x7fc00000, true);
    new DataView(bad.buffer).setUint32(at + 4 * 6, 0xff800000, true); // −Inf
    await Deno.writeFile(input, bad);
    await expectRefused({
      args: ["convert", input, join(dir, "X.safetensors")],
      code: 1,
      names: [input, "base_model.conv1.weight", "1 NaN and 1 Inf of 108 values"],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
