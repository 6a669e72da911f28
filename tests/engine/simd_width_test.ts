/**
 * llvmpipe's vector width (`LP_NATIVE_VECTOR_WIDTH`, 256 bits unless set): read from the adapter's name, and
 * the block kernels' workgroups sized to it (kernels/_wgsl.ts `blockWorkgroup`). On llvmpipe, the matmul and
 * conv2d checks of `selftest --quick` also run at the other width (512 or 256 bits) in a child process, so
 * both workgroup sizes (8 and 16 invocations) are checked whatever the suite runs at.
 */
import { simdLanesOf } from "../../engine/device.ts";
import { blockWorkgroup } from "../../kernels/_wgsl.ts";
import { spawnCli } from "../bad_inputs/harness.ts";
import { assertEquals, engine, gpuTest } from "../helpers.ts";

Deno.test("an adapter's SIMD lanes come from llvmpipe's vector width in its name", () => {
  assertEquals(simdLanesOf("llvmpipe (LLVM 15.0.6, 256 bits)"), 8);
  assertEquals(simdLanesOf("llvmpipe (LLVM 15.0.6, 512 bits)"), 16);
  assertEquals(simdLanesOf("llvmpipe (LLVM 12.0.0, 128 bits)"), 4);
  assertEquals(simdLanesOf("NVIDIA H100 PCIe"), undefined);
  assertEquals(simdLanesOf("google swiftshader"), undefined);
  assertEquals(simdLanesOf("llvmpipe (LLVM 15.0.6, 100 bits)"), undefined);
});

gpuTest("the block kernels' workgroup is one SIMD group of the adapter (8…16 invocations)", (e) => {
  const lanes = e.adapterInfo.simdLanes;
  assertEquals(lanes, e.adapterInfo.software ? simdLanesOf(e.adapterInfo.name) : undefined);
  assertEquals(blockWorkgroup(e), lanes === undefined ? 8 : Math.min(16, Math.max(8, lanes)));
});

Deno.test({
  name: "on llvmpipe, selftest's matmul and conv2d checks pass at the other vector width too",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const lanes = e.adapterInfo.simdLanes;
    if (!/llvmpipe/i.test(e.adapterInfo.name) || lanes === undefined) {
      console.log(`skipped: the adapter is ${e.adapterInfo.name}, not llvmpipe`);
      return;
    }
    const other = lanes === 16 ? "256" : "512";
    const ops = "matmul,matmul_backward,conv2d,conv2d_backward_input,conv2d_backward_weight";
    const { code, stdout, stderr } = await spawnCli(["selftest", "--quick", "--only", ops], {
      env: { LP_NATIVE_VECTOR_WIDTH: other },
    }).output();
    const out = new TextDecoder().decode(stdout), err = new TextDecoder().decode(stderr);
    const what = `--- stdout ---\n${out}\n--- stderr ---\n${err}`;
    assertEquals(code, 0, what);
    const lines = out.trim().split("\n");
    assertEquals(
      lines[0].includes(`${other} bits`),
      true,
      `the child's adapter runs ${other}-bit vectors: ${what}`,
    );
    const m = /^selftest: (\d+) passed, 0 failed$/.exec(lines[lines.length - 1]);
    assertEquals(m !== null && Number(m[1]) >= 20, true, what);
    console.log(`${m![1]} checks passed at ${other} bits`);
  },
});
