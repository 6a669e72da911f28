/**
 * A small seeded pseudo-random generator (mulberry32): reproducible shuffles, augmentation choices,
 * initialisations and synthetic data across runs and machines.
 *
 * @module
 */

/**
 * Uniform numbers in [0, 1) from a 32-bit seed.
 *
 * @example
 * ```ts
 * const u = mulberry32(42);
 * const k = Math.floor(u() * 8); // a random symmetry
 * ```
 */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
