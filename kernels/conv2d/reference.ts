/**
 * CPU references of the convolution (float64 accumulation), the ground truth of the tests and of
 * `he2gene selftest` for every strategy.
 *
 * @module
 */
import { conv2dGeometry } from "./common.ts";

/**
 * CPU reference of the forward pass (float64 accumulation), with the same epilogue.
 *
 * @example
 * ```ts
 * const { data, shape } = conv2dCpu(x, [1, 3, 8, 8], w, [4, 3, 3, 3], { padding: 1 });
 * ```
 */
export function conv2dCpu(
  x: Float32Array,
  xShape: readonly number[],
  w: Float32Array,
  wShape: readonly number[],
  options: {
    stride?: number;
    padding?: number;
    bias?: Float32Array;
    residual?: Float32Array;
    relu?: boolean;
  } = {},
): { data: Float32Array; shape: number[] } {
  const g = conv2dGeometry(xShape, wShape, options);
  const { n: N, cin, h: H, w: W, cout, kh: KH, kw: KW, stride: s, pad, oh: OH, ow: OW } = g;
  const y = new Float32Array(N * cout * OH * OW);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      for (let oh = 0; oh < OH; oh++) {
        for (let ow = 0; ow < OW; ow++) {
          let acc = options.bias ? options.bias[co] : 0;
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = oh * s - pad + kh;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = ow * s - pad + kw;
                if (iw < 0 || iw >= W) continue;
                acc += x[((n * cin + ci) * H + ih) * W + iw] * w[((co * cin + ci) * KH + kh) * KW + kw];
              }
            }
          }
          const o = ((n * cout + co) * OH + oh) * OW + ow;
          if (options.residual) acc += options.residual[o];
          y[o] = options.relu ? Math.max(acc, 0) : acc;
        }
      }
    }
  }
  return { data: y, shape: [N, cout, OH, OW] };
}

/**
 * CPU reference of the backward pass (float64 accumulation): gradients of x, w and the bias given dy.
 *
 * @example
 * ```ts
 * const { dx, dw, db } = conv2dBackwardCpu(x, [1, 3, 8, 8], w, [4, 3, 3, 3], dy, { padding: 1 });
 * ```
 */
export function conv2dBackwardCpu(
  x: Float32Array,
  xShape: readonly number[],
  w: Float32Array,
  wShape: readonly number[],
  dy: Float32Array,
  options: { stride?: number; padding?: number } = {},
): { dx: Float32Array; dw: Float32Array; db: Float32Array } {
  const g = conv2dGeometry(xShape, wShape, options);
  const { n: N, cin, h: H, w: W, cout, kh: KH, kw: KW, stride: s, pad, oh: OH, ow: OW } = g;
  const dx = new Float64Array(x.length);
  const dw = new Float64Array(w.length);
  const db = new Float64Array(cout);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      for (let oh = 0; oh < OH; oh++) {
        for (let ow = 0; ow < OW; ow++) {
          const d = dy[((n * cout + co) * OH + oh) * OW + ow];
          db[co] += d;
          for (let ci = 0; ci < cin; ci++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = oh * s - pad + kh;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = ow * s - pad + kw;
                if (iw < 0 || iw >= W) continue;
                const xi = ((n * cin + ci) * H + ih) * W + iw;
                const wi = ((co * cin + ci) * KH + kh) * KW + kw;
                dx[xi] += d * w[wi];
                dw[wi] += d * x[xi];
              }
            }
          }
        }
      }
    }
  }
  return { dx: Float32Array.from(dx), dw: Float32Array.from(dw), db: Float32Array.from(db) };
}
