import { convertCheckpoint, formatSummary, runConvert } from "../../cli/convert.ts";
import { UsageError } from "../../cli/main.ts";
import { CheckpointError, readSafetensors } from "../../weights/mod.ts";
import { assertEquals, assertRejects } from "../helpers.ts";
import { assertTensor, EXPECTED, fixture } from "./fixtures.ts";

async function inTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("convert writes every tensor as is and the gene names into the metadata", () =>
  inTemp(async (dir) => {
    const out = `${dir}/model_base.safetensors`;
    const s = await convertCheckpoint(fixture("model_base.pt"), out, {
      targetGenes: fixture("target_genes.txt"),
      auxGenes: fixture("aux_genes.txt"),
    });
    const { tensors, metadata } = await readSafetensors(out);
    assertEquals([...tensors.keys()], Object.keys(EXPECTED["model_base.pt"]));
    for (const [k, w] of Object.entries(EXPECTED["model_base.pt"])) assertTensor(k, tensors.get(k), w);
    assertEquals(JSON.parse(metadata.target_genes), ["GAPDH", "ACTB", "EPCAM", "KRT19", "PTPRC"]);
    assertEquals(JSON.parse(metadata.aux_genes).length, 7);
    assertEquals(JSON.parse(metadata.config), {
      target_head: { name: "fc1", outputs: 5 },
      aux_head: { name: "fc2", outputs: 7 },
      tumour_head: { name: "fc3", outputs: 1 },
    });
    assertEquals(metadata.format, "pt");
    assertEquals(s.tensors, tensors.size);
    // conv1 4·3·3·3 + bn1 4·4 + layer1 8·4 + 8·4 + fc1 5·8+5 + fc2 7·8+7 + fc3 8+1
    assertEquals(s.parameters, 108 + 16 + 32 + 32 + 45 + 63 + 9);
    assertEquals(s.integerElements, 2);
    assertEquals([...s.prefixes], [["base_model.*", 12], ["fc1.*", 2], ["fc2.*", 2], ["fc3.*", 2]]);
    const text = formatSummary("model_base.pt", out, s);
    if (!text.includes("base_model.* (12), fc1.* (2)")) throw new Error(text);
  }));

Deno.test("convert reports a wrapped state dict and keeps float16 as float16", () =>
  inTemp(async (dir) => {
    const s = await convertCheckpoint(fixture("wrapped.pt"), `${dir}/a.safetensors`);
    assertEquals(s.wrapper, "state_dict");
    if (!formatSummary("wrapped.pt", "a", s).includes('state dict under "state_dict"')) {
      throw new Error("no wrapper");
    }
    await convertCheckpoint(fixture("model_fp16.pt"), `${dir}/b.safetensors`);
    const { tensors } = await readSafetensors(`${dir}/b.safetensors`);
    assertEquals(tensors.get("fc1.weight")?.dtype, "F16");
  }));

Deno.test("convert refuses a gene list whose length differs from the head, naming both", () =>
  inTemp(async (dir) => {
    await assertRejects(
      () =>
        convertCheckpoint(fixture("model_base.pt"), `${dir}/x.safetensors`, {
          targetGenes: fixture("aux_genes.txt"),
        }),
      CheckpointError,
      "expected 5 target gene names (the rows of fc1.weight",
    );
    assertEquals([...Deno.readDirSync(dir)].length, 0);
  }));

Deno.test("runConvert needs exactly two paths", async () => {
  await assertRejects(() => runConvert([fixture("model_base.pt")]), UsageError, "expected an input .pt");
});

Deno.test("runConvert refuses a malicious checkpoint without writing anything", () =>
  inTemp(async (dir) => {
    await assertRejects(
      () => runConvert([fixture("evil.pt"), `${dir}/e.safetensors`]),
      CheckpointError,
      "posix.system",
    );
    assertEquals([...Deno.readDirSync(dir)].length, 0);
  }));
