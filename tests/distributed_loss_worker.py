"""One rank of the 2-process loss test, started by torchrun from tests/test_loss.py.

Reads the global batch and the tower weights from ``data.pt``, takes this rank's rows, runs a tiny DDP model
and SoftCLIPLoss, and writes the loss and gradients to ``rank<r>.pt`` in the output folder.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from softclip.loss import LossConfig, SoftCLIPLoss

MODALITIES = ("image", "text", "roi", "tag")


class LinearTowers(nn.Module):
    """One linear map per modality, then L2 normalisation; the same formula the test uses as reference."""

    def __init__(self, weights: dict[str, Tensor]) -> None:
        super().__init__()
        self.weights = nn.ParameterDict({name: nn.Parameter(value.clone()) for name, value in weights.items()})

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        outputs = {f"{m}_features": F.normalize(inputs[m] @ self.weights[m], dim=1) for m in MODALITIES}
        return {**outputs, "logit_scale": self.weights["logit_scale"]}


def local_rows(data: dict, rank: int) -> dict[str, Tensor]:
    """This rank's slice of the global batch (ranks may hold different numbers of rows)."""
    start = sum(data["sizes"][:rank])
    stop = start + data["sizes"][rank]
    return {m: data["inputs"][m][start:stop] for m in MODALITIES}


def main(data_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = torch.load(data_path, weights_only=True)
    model = DistributedDataParallel(LinearTowers(data["weights"]))
    outputs = model(local_rows(data, rank))
    for m in MODALITIES:
        outputs[f"{m}_features"].retain_grad()
    losses = SoftCLIPLoss(LossConfig(**data["config"]))(outputs)
    losses["loss"].backward()  # DDP averages the parameter gradients over the ranks here
    result = {
        "losses": {key: value.detach() for key, value in losses.items()},
        "feature_grads": {m: outputs[f"{m}_features"].grad for m in MODALITIES},
        "param_grads": {name: p.grad for name, p in model.module.weights.items()},
    }
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other may still be talking to it
    # DDP's reducer keeps gloo work objects that hold tensors; destroyed during interpreter shutdown they
    # abort the process ("terminate called without an active exception", seen on a loaded machine). Free
    # them while Python is fully alive, then leave without the interpreter's own teardown.
    del model, outputs, losses, result
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
