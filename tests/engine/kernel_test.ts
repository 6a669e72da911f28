import { strictEqual as assertStrictEquals } from "node:assert";
import { assertEquals } from "../helpers.ts";
import { single, variants } from "../../engine/kernel.ts";
import { wgsl } from "../../kernels/_wgsl.ts";

Deno.test("variants: name and cache key come from the parameters; each variant is built once", () => {
  let builds = 0;
  const fam = variants("demo", (p: { tm: number; vec: 1 | 4; relu: boolean; kind: string }) => {
    builds++;
    return {
      bindings: [{
        name: "x",
        access: "read" as const,
        type: p.vec === 4 ? "vec4<f32>" as const : "f32" as const,
      }],
      uniforms: { n: "u32" as const },
      workgroupSize: [64],
      body: wgsl`
@compute @workgroup_size(64) fn main() {
#if ${p.vec === 4}
  let v = x[0].x;
#else
  let v = x[0];
#endif
  _ = v * ${p.tm}.0;
}`,
    };
  });
  const a = fam({ tm: 8, vec: 4, relu: true, kind: "none" });
  assertEquals(a.name, "demo_tm8_vec4_relu");
  assertEquals(fam({ tm: 8, vec: 1, relu: false, kind: "sum-max" }).name, "demo_tm8_vec1_kindsummax");
  assertStrictEquals(fam({ tm: 8, vec: 4, relu: true, kind: "none" }), a);
  assertEquals(builds, 2);
  assertEquals(fam.built.size, 2);
  // The preprocessor kept one branch only.
  assertEquals(a.source.includes("x[0].x"), true);
  assertEquals(a.source.includes("let v = x[0];"), false);
  assertEquals(a.source.includes("var<storage, read> x: array<vec4<f32>>"), true);
});

Deno.test("single: a parameterless kernel is built on first use, once", () => {
  let builds = 0;
  const k = single("noop", () => {
    builds++;
    return {
      bindings: [],
      uniforms: {},
      workgroupSize: [1],
      body: "@compute @workgroup_size(1) fn main() {}",
    };
  });
  assertEquals(builds, 0);
  assertStrictEquals(k(), k());
  assertEquals(k().name, "noop");
  assertEquals(builds, 1);
});
