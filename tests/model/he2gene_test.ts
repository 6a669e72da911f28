import { HE2Gene, type HostTensor, inferConfig, RESNET50 } from "../../model/mod.ts";
import { maxActivationPerImage } from "../../model/resnet.ts";
import { assertClose, assertEquals, assertThrows, gpuTest, TOL } from "../helpers.ts";

interface Fixture {
  sd: Map<string, HostTensor>;
  x: HostTensor;
  target: HostTensor;
  aux: HostTensor;
  tumor: HostTensor;
}

async function load(name: string): Promise<Fixture> {
  const dir = new URL("../fixtures/model/", import.meta.url);
  const manifest = JSON.parse(await Deno.readTextFile(new URL(`${name}.json`, dir)));
  const bytes = await Deno.readFile(new URL(`${name}.bin`, dir));
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const sd = new Map<string, HostTensor>();
  const rest: Record<string, HostTensor> = {};
  let off = 0;
  for (const { name: k, shape } of manifest.tensors as { name: string; shape: number[] }[]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const t = { shape, data: all.slice(off, off + n) };
    off += n;
    if (["x", "target", "aux", "tumor"].includes(k)) rest[k] = t;
    else sd.set(k, t);
  }
  return { sd, x: rest.x, target: rest.target, aux: rest.aux, tumor: rest.tumor };
}

for (const name of ["bottleneck_w4_base", "basic_w4_spat"]) {
  gpuTest(`${name}: eval outputs match PyTorch, folded and unfolded`, async (e) => {
    const f = await load(name);
    const model = HE2Gene.fromStateDict(e, f.sd, name);
    assertEquals(model.config.variant, name.endsWith("base") ? "base" : "spat");
    const x = e.tensor(f.x.data, f.x.shape);
    const p = model.predict(x);
    assertClose(await p.target.toArray(), f.target.data, TOL.model, `${name} target (folded)`);
    assertClose(await p.aux.toArray(), f.aux.data, TOL.model, `${name} aux (folded)`);
    assertClose(await p.tumorProb.toArray(), f.tumor.data, TOL.model, `${name} tumour (folded)`);
    // One image at a time (the path batches larger than one storage binding take).
    if (x.shape[0] < 2) throw new Error(`${name}: the fixture needs a batch of 2 or more`);
    const c = model.predict(x, { chunk: 1 });
    assertClose(await c.target.toArray(), f.target.data, TOL.model, `${name} target (chunks of 1)`);
    assertClose(await c.aux.toArray(), f.aux.data, TOL.model, `${name} aux (chunks of 1)`);
    assertClose(await c.tumorProb.toArray(), f.tumor.data, TOL.model, `${name} tumour (chunks of 1)`);
    const o = e.scope(() => {
      const out = model.forward(x, { training: false });
      out.features.dispose();
      return out;
    });
    assertClose(await o.target.toArray(), f.target.data, TOL.model, `${name} target (eval forward)`);
    assertClose(await o.aux.toArray(), f.aux.data, TOL.model, `${name} aux (eval forward)`);
    assertClose(await o.tumorProb.toArray(), f.tumor.data, TOL.model, `${name} tumour (eval forward)`);
    // The state dict round-trips, num_batches_tracked included.
    const back = await model.stateDict();
    assertEquals([...back.keys()].sort(), [...f.sd.keys()].sort());
    for (const [k, v] of f.sd) assertEquals(back.get(k)!.data, v.data, k);
    model.dispose();
  });
}

gpuTest(
  "a state dict with missing, unexpected and mis-shaped keys is refused with every problem listed",
  async (e) => {
    const f = await load("bottleneck_w4_base");
    const sd = new Map(f.sd);
    sd.delete("base_model.layer2.0.bn1.running_var");
    sd.set("base_model.extra.weight", { shape: [1], data: new Float32Array(1) });
    sd.set("fc1.bias", { shape: [6], data: new Float32Array(6) });
    const err = assertThrows(() => HE2Gene.fromStateDict(e, sd, "bad.pt"), RangeError, "Cannot load bad.pt");
    for (
      const s of [
        "missing base_model.layer2.0.bn1.running_var",
        "unexpected base_model.extra.weight",
        "fc1.bias: expected [5], found [6]",
      ]
    ) {
      assertEquals(err.message.includes(s), true, `message lists "${s}": ${err.message}`);
    }
  },
);

gpuTest("the architecture is read from the keys: variant, block, depth, width and gene counts", async () => {
  const f = await load("basic_w4_spat");
  const c = inferConfig(new Map([...f.sd].map(([k, v]) => [k, v.shape])));
  assertEquals(c.variant, "spat");
  assertEquals(c.backbone.block, "basic");
  assertEquals([...c.backbone.layers], [2, 1, 1, 1]);
  assertEquals(c.backbone.width, 4);
  assertEquals([c.targetGenes, c.auxGenes], [5, 7]);
});

Deno.test("the largest activation of a ResNet-50 image at 224² is conv1's (= layer1's) output", () => {
  // 64 × 112 × 112 = 256 × 56 × 56 = 802 816 floats: 41 images fit a 128 MiB binding, 42 do not.
  assertEquals(maxActivationPerImage(RESNET50, 224, 224), 802816);
  assertEquals(Math.floor(2 ** 27 / (4 * 802816)), 41);
});
