"""`python -m training` for one rank that dies: run under torchrun as

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/helpers_ddp.py RANK EPOCH train ...

Rank RANK exits (status 3, like a crash) when its epoch EPOCH (1-based) starts; the other ranks are left
waiting in a collective until torchrun stops them. Everything else is the ordinary command line.
"""

import os
import sys

import training.train as trainer
from training.__main__ import main


def dying_at(rank: int, epoch: int):
    real_epoch, calls = trainer.train_one_epoch, []

    def train_one_epoch(*args, **kwargs):
        calls.append(1)
        if int(os.environ["RANK"]) == rank and len(calls) == epoch:
            os._exit(3)
        return real_epoch(*args, **kwargs)

    return train_one_epoch


if __name__ == "__main__":
    trainer.train_one_epoch = dying_at(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
