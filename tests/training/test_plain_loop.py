"""The model on the data tools' shards without DeepSpeed: `tiny` learns in a plain torch loop."""

from __future__ import annotations

import numpy as np
import torch

from data_tools.dataset import PackedDataset, SampleOrder, open_split
from model.gpt2 import GPT
from model.optim import build_optimizer
from model.presets import get_preset


def test_tiny_trains_on_shards_in_a_plain_torch_loop(tiny_data):
    torch.manual_seed(0)
    ds = PackedDataset(open_split(tiny_data, "train"), seq_len=64)
    cfg = get_preset("tiny", vocab_size=600, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = GPT(cfg)
    opt = build_optimizer(model, lr=3e-3, weight_decay=0.1)
    batches = SampleOrder(len(ds), seed=0).rank_batches(0, 1, micro_batch=16)
    losses = []
    for _ in range(60):
        tokens = torch.from_numpy(np.stack([ds[int(i)] for i in next(batches)]))  # [16, 65]
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 6.0  # about ln(600) = 6.4 at the start
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.8, losses  # 6.2 -> 5.1 here
