"""`python -m training` for one rank that dies while synthesizing: run under torchrun as

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/helpers_synthesize.py RANK CHUNK synthesize ...

Rank RANK exits (status 3, like a crash) as its CHUNK-th chunk (1-based) starts; the other ranks are left
waiting in a collective until torchrun stops them. Everything else is the ordinary command line.
"""

import os
import sys

import training.synthesize as synthesis
from training.__main__ import main


def dying_at(rank: int, chunk_number: int):
    real_make_chunk, calls = synthesis._make_chunk, []

    def make_chunk(generator, chunk, *args, **kwargs):
        if chunk is not None:
            calls.append(chunk)
            if int(os.environ["RANK"]) == rank and len(calls) == chunk_number:
                os._exit(3)
        return real_make_chunk(generator, chunk, *args, **kwargs)

    return make_chunk


if __name__ == "__main__":
    synthesis._make_chunk = dying_at(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
