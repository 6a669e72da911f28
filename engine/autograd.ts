/**
 * Reverse-mode automatic differentiation over a tape.
 *
 * - An op is declared once with {@linkcode defineOp}: its forward (which returns the output and what
 *   backward needs) and its backward, side by side. A declaration without `backward` does not type-check.
 * - Outside {@linkcode noGrad}, every op whose inputs need gradients appends a node to the active tape:
 *   an explicit {@linkcode Tape} inside `tape.record(fn)`, else the implicit default tape. As in PyTorch,
 *   `await backward(loss)` (or `loss.backward()`) walks the nodes in reverse, sums gradients of tensors
 *   used more than once (with the engine's own add kernel: the engine knows no ops), adds each leaf's
 *   gradient to its `.grad`, and consumes the graph.
 *   `tape.backward(loss)` returns the gradients as a map instead.
 * - The tape retains what backward reads — saved tensors, and the inputs an op does not exclude with
 *   `backwardReads` — with a second reference to the same storage, so scopes may release their own
 *   handles; backward releases each node's as soon as it has run, `tape.dispose()` whatever is left.
 * - In no-grad mode nothing is recorded and intermediates can be released at once.
 *
 * @module
 */
import { grid, type TensorRange } from "./engine.ts";
import { variants } from "./kernel.ts";
import { flatTexel, textureReads } from "./flat.ts";
import { checkNumerics, noteOutput } from "./numerics.ts";
import { Tensor } from "./tensor.ts";

/** A recorded op application. */
interface Node {
  name: string;
  /** The caller's input and output tensors: identities (gradients are keyed by them), maybe released. */
  keys: (Tensor | null)[];
  output: Tensor;
  /** What backward receives: the tape's own reference where backward reads the data, else the key. */
  inputs: (Tensor | null)[];
  saved: unknown;
  /** Which inputs' data backward reads (`undefined`: all). */
  reads?: readonly boolean[];
  /** The tensors whose data this node keeps alive (one use each), released once it has run. */
  holds: Tensor[];
  backward: (gy: Tensor, saved: never, inputs: readonly (Tensor | null)[]) => readonly (Tensor | null)[];
}

/** Declaration of a differentiable op. */
export interface OpDecl<A extends readonly (Tensor | null)[], O, S> {
  name: string;
  /** Compute the output from tensor inputs and options; return what backward needs in `saved`. */
  forward(inputs: A, options: O): { output: Tensor; saved: S };
  /**
   * Gradients of the inputs (in input order; `null` where an input needs none) given the output gradient.
   * Returned tensors are owned by the tape; they must be new tensors (not `gy` itself or a saved tensor).
   */
  backward(gy: Tensor, saved: S, inputs: A, options: O): readonly (Tensor | null)[];
  /**
   * Which inputs' data backward reads (default: all). The tape keeps only those, and `saved`, alive until
   * the node's backward has run; an input marked `false` reaches backward as the caller's tensor, possibly
   * released: its shape, `requiresGrad` and {@linkcode needsGrad} still hold, its data does not.
   */
  backwardReads?: readonly boolean[];
}

// Non-leaf tensors computed (on a tape) from tensors that need gradients.
const computed = new WeakSet<Tensor>();
let current: Tape | null = null;
let implicit: Tape | null = null;
let noGradDepth = 0;

/** Mark a leaf tensor (a parameter or input) as needing a gradient. Returns the tensor. */
export function requiresGrad(t: Tensor, on = true): Tensor {
  t.requiresGrad = on;
  return t;
}

/** Whether `t` needs a gradient (a leaf with `requiresGrad`, or computed on a tape from one). */
export function needsGrad(t: Tensor | null): boolean {
  return t !== null && (t.requiresGrad || computed.has(t));
}

/**
 * Run `fn` without recording, whatever tape is active.
 *
 * @example
 * ```ts
 * const y = noGrad(() => model.forward(x));
 * ```
 */
export function noGrad<T>(fn: () => T): T {
  noGradDepth++;
  try {
    return fn();
  } finally {
    noGradDepth--;
  }
}

/** True when ops whose inputs need gradients are recorded now (i.e. not inside {@linkcode noGrad}). */
export function isRecording(): boolean {
  // Outside noGrad, an op whose inputs need gradients is recorded (on the explicit or the implicit tape).
  return noGradDepth === 0;
}

/**
 * Declare a differentiable op; returns the function that applies it (and records it when needed).
 *
 * @example
 * ```ts
 * const square = defineOp<[Tensor], void, Tensor>({
 *   name: "square",
 *   forward: ([x]) => ({ output: mul(x, x), saved: x }),
 *   backward: (gy, x) => [mul(mul(gy, x), 2)],
 * });
 * ```
 */
export function defineOp<A extends readonly (Tensor | null)[], O = void, S = void>(
  decl: OpDecl<A, O, S>,
): (inputs: A, options: O) => Tensor {
  return (inputs, options) => {
    const { output, saved } = decl.forward(inputs, options);
    noteOutput(output, decl.name, inputs);
    if (noGradDepth === 0 && inputs.some(needsGrad)) {
      const tape = current ?? (implicit ??= new Tape());
      computed.add(output);
      tape.push({
        name: decl.name,
        keys: [...inputs],
        output,
        inputs: [...inputs],
        saved,
        reads: decl.backwardReads,
        holds: [],
        backward: ((gy: Tensor, s: S, ins: A) =>
          decl.backward(gy, s, ins, options)) as unknown as Node["backward"],
      });
    }
    return output;
  };
}

/**
 * A recording of op applications for one backward pass.
 *
 * @example
 * ```ts
 * const tape = new Tape();
 * const loss = tape.record(() => mse(model.forward(x), y));
 * const grads = tape.backward(loss); // Map<Tensor, Tensor> for every requiresGrad tensor
 * tape.dispose();
 * ```
 */
export class Tape {
  #nodes: (Node | null)[] = [];
  // Tensors recorded as an input or output: gradients are keyed by them.
  #known = new Set<Tensor>();
  // The tape's own references to tensors whose data a node's backward reads, with the count of such nodes.
  #held = new Map<Tensor, { ref: Tensor; uses: number }>();

  /** Record every differentiable op `fn` applies. Tapes do not nest. */
  record<T>(fn: () => T): T {
    if (current) throw new Error("Cannot record: another tape is already recording");
    current = this;
    try {
      return fn();
    } finally {
      current = null;
    }
  }

  /** @internal */
  push(node: Node): void {
    // Keep the data backward reads alive even if a scope releases the caller's handles; nothing else (an
    // output nobody reads, e.g. a batch norm's output consumed by a ReLU, is released with its last handle).
    for (const t of node.keys) if (t) this.#known.add(t);
    this.#known.add(node.output);
    node.inputs = node.keys.map((t, j) => (t && node.reads?.[j] !== false ? this.#hold(t, node) : t));
    node.saved = this.#holdDeep(node.saved, node);
    this.#nodes.push(node);
  }

  #hold(t: Tensor, node: Node): Tensor {
    let h = this.#held.get(t);
    if (!h) {
      const ref = t.engine.scope(() => t.reshape(t.shape).keep());
      if (t.requiresGrad) ref.requiresGrad = true;
      else if (computed.has(t)) computed.add(ref);
      this.#held.set(t, h = { ref, uses: 0 });
    }
    h.uses++;
    node.holds.push(t);
    return h.ref;
  }

  #holdDeep(v: unknown, node: Node): unknown {
    if (v instanceof Tensor) return this.#hold(v, node);
    if (Array.isArray(v)) return v.map((x) => this.#holdDeep(x, node));
    if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, this.#holdDeep(x, node)]));
    }
    return v;
  }

  // A node has run (or will not run): drop its uses; data no remaining node reads goes back to the pool.
  #release(node: Node): void {
    for (const t of node.holds) {
      const h = this.#held.get(t);
      if (h && --h.uses === 0) {
        h.ref.dispose();
        this.#held.delete(t);
      }
    }
    node.holds = [];
  }

  /**
   * Back-propagate from `loss` (any shape; seeded with ones unless `seed` is given). Returns the gradient
   * of every tensor marked with {@linkcode requiresGrad} that the loss depends on, keyed by the tensor the
   * caller holds. Gradients of tensors used twice are summed. Each node's saved data is released as soon
   * as its backward has run.
   */
  backward(loss: Tensor, seed?: Tensor): Map<Tensor, Tensor> {
    if (!this.#known.has(loss)) {
      throw new Error(
        "Cannot back-propagate: the loss was not computed on this tape from tensors that need gradients",
      );
    }
    const grads = new Map<Tensor, Tensor>(); // keyed by the caller's tensors
    grads.set(loss, seed ?? loss.engine.tensor(new Float32Array(loss.size).fill(1), loss.shape));
    // Reverse order is a reverse topological order: when node i is reached, every consumer of its output
    // has been processed, so the output's gradient is complete, and dead afterwards.
    for (let i = this.#nodes.length - 1; i >= 0; i--) {
      const node = this.#nodes[i]!;
      this.#nodes[i] = null;
      const gy = grads.get(node.output);
      if (!gy) {
        this.#release(node);
        continue;
      }
      const gs = noGrad(() => node.backward(gy, node.saved as never, node.inputs));
      if (gs.length !== node.keys.length) {
        throw new Error(
          `Backward of ${node.name} returned ${gs.length} gradients for ${node.keys.length} inputs`,
        );
      }
      node.keys.forEach((inp, j) => {
        let g = gs[j];
        if (!g) return;
        if (!inp || !needsGrad(inp)) return g.dispose();
        if (g.size !== inp.size) {
          throw new RangeError(
            `Backward of ${node.name}: gradient of input ${j} has shape [${g.shape}], input has [${inp.shape}]`,
          );
        }
        if (g.shape.length !== inp.shape.length) g = reshapeOwned(g, inp.shape);
        const prev = grads.get(inp);
        grads.set(inp, prev ? addOwned(prev, g) : g);
      });
      if (node.output !== loss || !seed) gy.dispose();
      grads.delete(node.output);
      this.#release(node);
    }
    // What is left are the gradients of leaves.
    return grads;
  }

  /** True when `t` was recorded on this tape. */
  has(t: Tensor): boolean {
    return this.#known.has(t);
  }

  /** Release everything the tape retained. */
  dispose(): void {
    for (const h of this.#held.values()) h.ref.dispose();
    this.#held.clear();
    this.#nodes = [];
    this.#known.clear();
  }
}

// ---------------------------------------------------------------- gradient accumulation

const WG = 128;

// y[i] = a[i] + b[i]: the sum of two gradients of one tensor (the engine's own kernel: it knows no ops).
// a, b, y: [n] (the same range of each); vec4s with `vec` (n a multiple of 4: 4× fewer loads on llvmpipe).
// With `tex` (vec4, one binding), a and b are read from flat textures A and B (engine/flat.ts).
const gradAddKernel = variants("grad_add", (p: { vec: boolean; tex?: boolean }) => {
  const type = p.vec ? "vec4<f32>" : "f32";
  return {
    bindings: [
      p.tex ? { name: "A", access: "read", texture: "sampled" } : { name: "a", access: "read", type },
      p.tex ? { name: "B", access: "read", texture: "sampled" } : { name: "b", access: "read", type },
      { name: "y", access: "read_write", type },
    ] as const,
    uniforms: { n: "u32" },
    workgroupSize: [WG],
    body: `
@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = g.x + g.y * (nwg.x * WG_X);
  if (i >= p.n) { return; }
  y[i] = ${p.tex ? `${flatTexel("A", "i")} + ${flatTexel("B", "i")}` : "a[i] + b[i]"};
}`,
  };
});

/**
 * `a + b` into a new tensor of `a`'s shape (the sizes are equal), then releases `a` and `b`. Tensors larger
 * than one storage binding are added in aligned element ranges, one dispatch per range.
 */
function addOwned(a: Tensor, b: Tensor): Tensor {
  const e = a.engine;
  const y = e.empty(a.shape, "grad");
  const n = y.size;
  const align = e.offsetAlign / 4;
  const per = Math.floor(e.maxBinding / 4 / align) * align;
  const whole = n <= per;
  const vec = n % 4 === 0; // range starts are multiples of the offset alignment
  const tex = textureReads(e, "grad", [a, b], vec && whole);
  if (tex) {
    e.run(gradAddKernel({ vec: true, tex: true }), {
      bindings: [...tex, y],
      uniforms: { n: n / 4 },
      workgroups: grid(n / 4, WG),
      info: `[${a.shape}] textures`,
    });
    a.dispose();
    b.dispose();
    return y;
  }
  const k = gradAddKernel({ vec });
  for (let s = 0; s < n; s += per) {
    const c = Math.min(per, n - s);
    const bind = (t: Tensor): Tensor | TensorRange => (whole ? t : { tensor: t, offset: s, size: c });
    e.run(k, {
      bindings: [bind(a), bind(b), bind(y)],
      uniforms: { n: vec ? c / 4 : c },
      workgroups: grid(vec ? c / 4 : c, WG),
      info: `[${a.shape}]`,
    });
  }
  a.dispose();
  b.dispose();
  return y;
}

function reshapeOwned(g: Tensor, shape: readonly number[]): Tensor {
  const r = g.reshape(shape);
  g.dispose();
  return r;
}

/**
 * Back-propagate from `loss` (PyTorch's `loss.backward()`): every leaf with `requiresGrad` that the loss
 * depends on gets its gradient added to `.grad`. The graph recorded on the loss's tape is consumed.
 *
 * @example
 * ```ts
 * const w = engine.tensor(new Float32Array([1, 2]), [2], { requiresGrad: true });
 * const loss = sum(mul(w, w));
 * await backward(loss);
 * console.log(await w.grad!.toArray()); // [2, 4]
 * ```
 */
export async function backward(loss: Tensor, seed?: Tensor): Promise<void> {
  const tape = current?.has(loss) ? current : implicit?.has(loss) ? implicit : null;
  if (!tape) {
    throw new Error(
      `Cannot back-propagate from tensor #${loss.id} [${loss.shape}]: it was not computed from tensors ` +
        `with requiresGrad (or was computed under noGrad, or its graph was already consumed)`,
    );
  }
  try {
    await checkNumerics(loss.engine); // with HE2GENE_DEBUG_NAN: name the op that first produced NaN/Inf
    const grads = tape.backward(loss, seed);
    for (const [leaf, g] of grads) {
      if (leaf.grad && !leaf.grad.disposed) {
        const sum = addOwned(leaf.grad, g);
        leaf.grad = sum.keep();
      } else {
        leaf.grad = g.keep();
      }
    }
  } finally {
    tape.dispose();
    if (tape === implicit) implicit = null;
  }
}

let recomputeDepth = 0;

/**
 * True while {@linkcode checkpoint} recomputes a segment during backward: ops with side effects on state
 * (batch norm's running statistics) must not apply them a second time.
 */
export function isRecomputing(): boolean {
  return recomputeDepth > 0;
}

/**
 * Activation checkpointing (PyTorch's `torch.utils.checkpoint`): run `fn(inputs)` without recording its
 * intermediates, and record one node whose backward runs `fn` again on a tape of its own and
 * back-propagates through it. Memory then holds only the segment's inputs and output until backward, at
 * the price of a second forward of the segment. `params` are the leaves `fn` reads besides `inputs` (they
 * receive gradients through this node). `fn` must compute the same thing both times (deterministic
 * kernels; state updates are skipped while {@linkcode isRecomputing}).
 *
 * @example
 * ```ts
 * const y = checkpoint(([x]) => block(x), [x], blockParams);
 * ```
 */
export function checkpoint(
  fn: (inputs: readonly Tensor[]) => Tensor,
  inputs: Tensor[],
  params: Tensor[],
): Tensor {
  const all = [...inputs, ...params];
  if (noGradDepth > 0 || !all.some(needsGrad)) return fn(inputs);
  return checkpointOp(all, { fn, count: inputs.length, params });
}

const checkpointOp = defineOp<
  Tensor[],
  { fn: (inputs: readonly Tensor[]) => Tensor; count: number; params: Tensor[] },
  void
>({
  name: "checkpoint",
  forward: (all, o) => ({ output: noGrad(() => o.fn(all.slice(0, o.count))), saved: undefined }),
  backward: (gy, _saved, all, o) => {
    // Recompute on a tape of our own, recording (backward itself runs under noGrad), with each input as a
    // leaf of its own that shares the input's storage.
    const leaves = all.slice(0, o.count).map((t) => requiresGrad(t.reshape(t.shape)));
    const inner = new Tape();
    const [depth, outer] = [noGradDepth, current];
    noGradDepth = 0;
    current = null;
    recomputeDepth++;
    let out: Tensor;
    try {
      out = inner.record(() => o.fn(leaves));
    } finally {
      noGradDepth = depth;
      current = outer;
      recomputeDepth--;
    }
    try {
      const grads = inner.backward(out, gy);
      // Keyed as `fn` used them: our leaves, and the caller's parameters (not the tape's aliases in `all`).
      return [...leaves, ...o.params].map((t) => grads.get(t) ?? null);
    } finally {
      inner.dispose();
      out.dispose();
      for (const l of leaves) l.dispose();
    }
  },
});

/** Drop the implicit graph recorded so far (e.g. after a forward pass whose loss is not needed). */
export function clearGraph(): void {
  implicit?.dispose();
  implicit = null;
}

/**
 * Release and clear `.grad` of each tensor (an optimizer's `zeroGrad`).
 *
 * @example
 * ```ts
 * zeroGrad([w, b]);
 * ```
 */
export function zeroGrad(params: Iterable<Tensor>): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}
