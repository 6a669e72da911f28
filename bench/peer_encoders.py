"""PyTorch's figures for the encoders suite (bench/encoders.ts): forward at a batch of 224 px images, on this
machine's CPU (float32, torch.set_num_threads as given), for torchvision's ResNet-50 (fc = Identity) and
plain-torch ViTs in timm's arithmetic (timm is not installable here): ViT-S/16, ViT-B/16, ViT-L/16 (class
token, GELU MLP, class-token pooling). Random weights; times only. Prints one JSON line per model:
{"model", "batch", "seconds"} (median of REPS after one warm-up).

    python3 peer_encoders.py BATCH REPS THREADS MODEL[:BATCH]...
    (MODEL: resnet50 | vit_s16 | vit_b16 | vit_l16; `:BATCH` overrides BATCH for that model)
"""
import json
import sys
import time

import torch
from torch import nn

batch, reps, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
SIZES = {"vit_s16": (384, 12, 6), "vit_b16": (768, 12, 12), "vit_l16": (1024, 24, 16)}


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q * (c // self.h) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, d, depth, h):
        super().__init__()
        self.proj = nn.Conv2d(3, d, 16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 197, d))
        self.blocks = nn.Sequential(*[Block(d, h) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.norm(self.blocks(x))[:, 0]


for arg in sys.argv[4:]:
    name, _, own = arg.partition(":")
    n = int(own) if own else batch
    if name == "resnet50":
        import torchvision
        m = torchvision.models.resnet50()
        m.fc = nn.Identity()
    else:
        m = ViT(*SIZES[name])
    m.eval()
    x = torch.randn(n, 3, 224, 224)
    ts = []
    with torch.no_grad():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            m(x)
            if i:
                ts.append(time.perf_counter() - t0)
    ts.sort()
    print(json.dumps({"model": name, "batch": n, "seconds": ts[len(ts) // 2]}), flush=True)
