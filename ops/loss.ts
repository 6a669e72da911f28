/**
 * Differentiable losses (PyTorch, `reduction="mean"`): `mseLoss`, `bceLoss` on probabilities, and
 * HE2Gene-Spat's `maskedMseLoss`. Each is a scalar tensor `[]` that stays on the GPU; forward and backward
 * are the launchers of `kernels/loss.ts` (formulas and references there). Both the input and the target
 * receive gradients when they need them; a mask never does.
 *
 * @module
 */
import { defineOp, needsGrad } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import { lossBackward, lossForward } from "../kernels/loss.ts";

const mseOp = defineOp<[Tensor, Tensor], void, void>({
  name: "mse_loss",
  forward: ([p, t]) => ({ output: lossForward("mse", [p, t]), saved: undefined }),
  backward: (gy, _s, [p, t]) => lossBackward("mse", gy, [p, t], { target: needsGrad(t) }),
});

const bceOp = defineOp<[Tensor, Tensor], void, void>({
  name: "bce_loss",
  forward: ([p, t]) => ({ output: lossForward("bce", [p, t]), saved: undefined }),
  backward: (gy, _s, [p, t]) => lossBackward("bce", gy, [p, t], { target: needsGrad(t) }),
});

const maskedOp = defineOp<[Tensor, Tensor, Tensor], void, void>({
  name: "masked_mse_loss",
  forward: ([p, t, m]) => ({ output: lossForward("masked_mse", [p, t], { mask: m }), saved: undefined }),
  backward: (gy, _s, [p, t, m]) => [
    ...lossBackward("masked_mse", gy, [p, t], { target: needsGrad(t), mask: m }),
    null,
  ],
});

/**
 * Mean squared error over all elements (PyTorch `MSELoss()`); a scalar tensor `[]`. Differentiable in
 * both inputs.
 *
 * @example
 * ```ts
 * const loss = mseLoss(pred, target); // pred, target: [B, G] → []
 * ```
 */
export const mseLoss = (pred: Tensor, target: Tensor): Tensor => mseOp([pred, target]);

/**
 * Binary cross-entropy on probabilities (PyTorch `BCELoss()`): logs clamped at −100, so `p` = 0 or 1
 * gives a finite loss and gradient. Differentiable in both inputs (the target's gradient is that of the
 * clamped forward, `max(log1p(−p), −100) − max(log p, −100)`, over N).
 *
 * @example
 * ```ts
 * const loss = bceLoss(sigmoid(logits), labels); // [B, G] → []
 * ```
 */
export const bceLoss = (prob: Tensor, target: Tensor): Tensor => bceOp([prob, target]);

/**
 * Mean squared error over the rows `b` with `mask[b] ≠ 0`:
 * `Σ_{b held} Σ_g (pred − target)² / (rows held · G)`, and 0 (with zero gradients) when no row holds.
 * HE2Gene-Spat's spatial constraint: `pred` are a spot's predicted target genes, `target` the mean
 * prediction of its same-label neighbours; both receive gradients, the mask none.
 *
 * @example
 * ```ts
 * const loss = maskedMseLoss(pred, neighbourMean, hasNeighbours); // [B, G], [B, G], [B] → []
 * ```
 */
export const maskedMseLoss = (pred: Tensor, target: Tensor, mask: Tensor): Tensor =>
  maskedOp([pred, target, mask]);
