"""Worker for test_trainer_ddp.py, started by ``torchrun``: trains exactly as ``ddmr train``
does (``ddmr_core.training.trainer.train``), then saves this rank's weights and the sample indices
it trained on to ``DUMP_DIR/rank<R>.pt``."""

import os
import sys

import torch

from ddmr_core.training.trainer import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    config, run_dir, dump_dir = sys.argv[1:4]
    trainer = train(config, sys.argv[4:], run_dir=run_dir, device="cpu")
    rank = int(os.environ["RANK"])
    torch.save({"model": trainer.model.state_dict(), "seen": trainer.seen_indices,
                "counters": trainer.counters}, os.path.join(dump_dir, f"rank{rank}.pt"))
