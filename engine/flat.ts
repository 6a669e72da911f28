/**
 * Flat textures: a tensor copied into an rgba32float texture (no kernel) so that a kernel reads it with
 * texel fetches instead of storage loads. On llvmpipe (Mesa 22) every storage load is a loop over the SIMD
 * lanes and a texel fetch one vector gather: a read through a flat texture, copy included, costs about a
 * third of a storage read there. Used on software adapters by the kernels that read large tensors once
 * (conv2d's layout copies, batch norm, the matmul pack, elementwise sums).
 *
 * @module
 */
import type { Engine, EngineTexture } from "./engine.ts";
import type { Tensor } from "./tensor.ts";

/** Texels per row of {@linkcode flatTexture} (4 096 floats). */
export const FLAT_WIDTH = 1024;

/**
 * `src` (its size a multiple of 4) as a flat texture for `role`: element i in component i % 4 of texel
 * ((i / 4) % FLAT_WIDTH, i / (4 · FLAT_WIDTH)), filled by copies (whole rows, then the partial last row; no
 * kernel). The height is rounded up to a power of two so that few sizes recur in the engine's texture
 * cache. Null where the tensor would not fit the adapter's texture size.
 */
export function flatTexture(e: Engine, role: string, src: Tensor): EngineTexture | null {
  if (src.size % 4 !== 0 || src.size === 0 || !flatFits(e, src.size)) return null;
  const rowLen = FLAT_WIDTH * 4;
  const full = Math.floor(src.size / rowLen), tail = (src.size - full * rowLen) / 4;
  const height = flatHeight(src.size);
  const t = e.texture(role, FLAT_WIDTH, height);
  if (full) e.copyToTexture(src, t, 0, full);
  if (tail) e.copyRowToTexture(src, t, full * rowLen, full, tail);
  return t;
}

// Texel rows of a flat texture of `size` elements, rounded up to a power of two.
const flatHeight = (size: number) => 2 ** Math.ceil(Math.log2(Math.ceil(size / (FLAT_WIDTH * 4))));

/** Whether `size` elements fit a {@linkcode flatTexture} on `e` (the adapter's texture height). */
export const flatFits = (e: Engine, size: number): boolean =>
  flatHeight(size) <= e.limits.maxTextureDimension2D;

/** WGSL: element `i` of a {@linkcode flatTexture} bound as `T` (an f32). */
export const flatLoad = (T: string, i: string) =>
  `textureLoad(${T}, vec2u(((${i}) >> 2u) & ${FLAT_WIDTH - 1}u, (${i}) >> ${
    Math.log2(FLAT_WIDTH) + 2
  }u), 0)[(${i}) & 3u]`;

/** WGSL: texel `i` of a {@linkcode flatTexture} bound as `T` (elements 4i … 4i + 3, a vec4f). */
export const flatTexel = (T: string, i: string) =>
  `textureLoad(${T}, vec2u((${i}) & ${FLAT_WIDTH - 1}u, (${i}) >> ${Math.log2(FLAT_WIDTH)}u), 0)`;

/** Elements from which an elementwise kernel reads its same-shape operands through flat textures. */
export const TEXTURE_READS_MIN = 1 << 16;

/**
 * Flat textures of `tensors` (roles `${role}.0`, `${role}.1`, …) where `ok` (same shapes, vec4, one binding
 * each), the adapter is a software one (a storage load there is a loop over the SIMD lanes, a texel fetch one
 * gather: the copies and fetches cost ~1/3 of the loads) and the tensors have at least
 * {@linkcode TEXTURE_READS_MIN} elements; else null.
 */
export function textureReads(
  e: Engine,
  role: string,
  tensors: Tensor[],
  ok: boolean,
): EngineTexture[] | null {
  if (!ok || !e.adapterInfo.software || tensors.some((t) => t.size < TEXTURE_READS_MIN)) return null;
  const out: EngineTexture[] = [];
  for (const [k, t] of tensors.entries()) {
    const T = flatTexture(e, `${role}.${k}`, t);
    if (!T) return null;
    out.push(T);
  }
  return out;
}
