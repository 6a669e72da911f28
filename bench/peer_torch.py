#!/usr/bin/env python3
"""PyTorch on the same machine as `deno task bench`: the peer figures for bench/gpu.sh (issue 13, item 7).

Measures what the bench measures for he2gene, with the same definitions:
  * matmul 1024^3 (float32; GFLOP/s = 2*m*n*k / median seconds, operands resident, synchronised);
  * ResNet-50 + HE2Gene heads (250 target genes, 19 699 auxiliary genes, 1 tumour logit) inference, eval
    mode, no grad: seconds per image at each batch, from the host batch's upload to the three outputs
    back on the host (as bench/resnet.ts), median after warm-ups;
  * one training step (forward in training mode, HE2Gene-Base loss MSE + 20*MSE(aux) + BCE(tumour),
    backward, global gradient-norm clipping at 1.0, Adam lr 1e-5 with L2 weight decay 1e-4, as
    bench/train.ts), seconds per step at each batch, median after warm-ups.

Float32 is strict by default (TF32 off for matmul and cuDNN: he2gene computes in float32); `--tf32` adds
rows with PyTorch's TF32 allowed, as a second reference. On CUDA the times are wall clock around
`torch.cuda.synchronize()`. Prints a table, then one JSON line prefixed "json: ".

Usage: python3 bench/peer_torch.py [--device cuda|cpu] [--batches 1,8,32] [--train-batches 2,32]
                                   [--reps N] [--threads N] [--tf32]
"""
import argparse
import json
import statistics
import sys
import time


def parse_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--batches", default="1,8,32", help="inference batches (default 1,8,32)")
    ap.add_argument("--train-batches", default="2,32", help="training-step batches (default 2,32)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of each (default 5)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: PyTorch's)")
    ap.add_argument("--tf32", action="store_true", help="also time with TF32 allowed (CUDA)")
    args = ap.parse_args()

    try:
        import torch
        import torchvision
    except ImportError as err:
        print(f"peer_torch: PyTorch is not importable here ({err})", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda" and not torch.cuda.is_available():
        print("peer_torch: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(dev)
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    print(f"peer_torch: torch {torch.__version__}, torchvision {torchvision.__version__}, device {name}, "
          f"threads {torch.get_num_threads()}")

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def set_tf32(on):
        if dev == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on

    def timed(fn, reps, warm=2):
        for _ in range(warm):
            fn()
        sync()
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    rows = []
    modes = [("fp32", False)] + ([("tf32", True)] if args.tf32 and dev == "cuda" else [])
    gen = torch.Generator().manual_seed(0)

    # matmul 1024^3
    for mode, tf in modes:
        set_tf32(tf)
        n = 1024
        a = torch.randn(n, n, generator=gen).to(device)
        b = torch.randn(n, n, generator=gen).to(device)
        reps = max(args.reps, 20) if dev == "cuda" else args.reps
        s = timed(lambda: torch.mm(a, b), reps, warm=3)
        rows.append({"what": "matmul 1024^3", "mode": mode, "batch": None, "seconds": s,
                     "gflops": 2 * n ** 3 / s / 1e9})

    class HE2Gene(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.resnet50()
            self.backbone.fc = torch.nn.Identity()
            self.target = torch.nn.Linear(2048, 250)
            self.aux = torch.nn.Linear(2048, 19699)
            self.tumour = torch.nn.Linear(2048, 1)

        def forward(self, x):
            f = self.backbone(x)
            return self.target(f), self.aux(f), self.tumour(f)

    torch.manual_seed(0)
    model = HE2Gene().to(device)

    # inference: host batch in, three outputs back on the host
    model.eval()
    for mode, tf in modes:
        set_tf32(tf)
        for bsz in parse_list(args.batches):
            x = torch.randn(bsz, 3, 224, 224, generator=gen)

            def infer():
                with torch.no_grad():
                    y = model(x.to(device))
                    return [t.cpu() for t in y]

            s = timed(infer, args.reps)
            rows.append({"what": "resnet50+heads inference", "mode": mode, "batch": bsz, "seconds": s,
                         "s_per_image": s / bsz})

    # training step
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-4)
    mse = torch.nn.MSELoss()
    bce = torch.nn.BCEWithLogitsLoss()
    for mode, tf in modes:
        set_tf32(tf)
        for bsz in parse_list(args.train_batches):
            x = torch.randn(bsz, 3, 224, 224, generator=gen).to(device)
            yt = torch.rand(bsz, 250, generator=gen).to(device)
            ya = torch.rand(bsz, 19699, generator=gen).to(device)
            yl = (torch.rand(bsz, 1, generator=gen) > 0.5).float().to(device)
            losses = []

            def step():
                opt.zero_grad(set_to_none=True)
                pt, pa, pl = model(x)
                loss = mse(pt, yt) + 20 * mse(pa, ya) + bce(pl, yl)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(loss.detach())

            try:
                s = timed(step, args.reps, warm=1)
                rows.append({"what": "training step", "mode": mode, "batch": bsz, "seconds": s,
                             "s_per_image": s / bsz, "loss0": float(losses[0])})
            except RuntimeError as err:  # out of memory on a small device, say
                rows.append({"what": "training step", "mode": mode, "batch": bsz, "error": str(err)[:200]})
            if dev == "cuda":
                torch.cuda.empty_cache()

    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    print(f"{'what':<26} {'mode':<5} {'batch':>5} {'ms':>10} {'s/image':>9} {'GFLOP/s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['what']:<26} {r['mode']:<5} {r['batch']:>5}  error: {r['error']}")
            continue
        spi = f"{r['s_per_image']:.4f}" if "s_per_image" in r else ""
        gf = f"{r['gflops']:.0f}" if "gflops" in r else ""
        b = r["batch"] if r["batch"] is not None else ""
        print(f"{r['what']:<26} {r['mode']:<5} {b:>5} {r['seconds'] * 1e3:>10.2f} {spi:>9} {gf:>9}")
    if peak is not None:
        print(f"peak CUDA memory allocated: {peak / 2 ** 20:.0f} MiB")
    print("json: " + json.dumps({"device": name, "torch": torch.__version__, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
