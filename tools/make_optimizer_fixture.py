"""Writes tests/fixtures/train/adamw.safetensors: torch.optim.AdamW's
parameters after each of 4 steps on fixed gradients, with weight decay 0.1,
lr 1e-2 and a linear-warmup schedule, for tests/train/optimizer_test.cpp.

    $(tools/setup_python.sh) tools/make_optimizer_fixture.py
"""
import os

import torch
from safetensors.torch import save_file

torch.manual_seed(0)
p0 = torch.randn(5, 3)
b0 = torch.randn(3)
grads = [(torch.randn(5, 3), torch.randn(3)) for _ in range(4)]
w = p0.clone().requires_grad_(True)
b = b0.clone().requires_grad_(True)
opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                        lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
# lr multipliers as get_linear_schedule_with_warmup(warmup=2, total=4) gives them.
multipliers = [0.0, 0.5, 1.0, 0.5]
out = {"w0": p0, "b0": b0}
for t, (gw, gb) in enumerate(grads):
    for group in opt.param_groups:
        group["lr"] = 1e-2 * multipliers[t]
    w.grad = gw.clone()
    b.grad = gb.clone()
    opt.step()
    out[f"grad_w{t}"] = gw
    out[f"grad_b{t}"] = gb
    out[f"w{t + 1}"] = w.detach().clone()
    out[f"b{t + 1}"] = b.detach().clone()
target = os.path.join("tests", "fixtures", "train", "adamw.safetensors")
save_file(out, target)
print(f"wrote {target} (torch {torch.__version__})")
