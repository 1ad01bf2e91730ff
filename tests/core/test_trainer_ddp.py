"""DistributedDataParallel under ``torchrun``: 2 CPU processes (gloo).

Checks that both ranks end with identical weights, that each trained on its own half
of the data, and that the result equals one process accumulating twice as many
micro-batches (DDP averages the two ranks' accumulated gradients, and rank r's share
of the sampler's permutation is every other position)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ddmr_core.training.trainer import train
from conftest import TINY_TRAINING

HERE = Path(__file__).resolve().parent
CONFIG = TINY_TRAINING + """

ddmr.datasets.synthetic.subjects = (8, 2, 1)
ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
ddmr.augmenters.tps.max_displacement = 2.0
ddmr.Trainer.max_epochs = 2
ddmr.Trainer.log_images = False
"""


def test_two_cpu_processes(tmp_path):
    cfg = tmp_path / "exp.gin"
    cfg.write_text(CONFIG)
    dump = tmp_path / "dump"
    dump.mkdir()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "--monitor-interval", "0.1", str(HERE / "ddp_trainer_worker.py"),
         str(cfg), str(tmp_path / "run"), str(dump), "ddmr.Trainer.accumulate = 2"],
        capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0 = torch.load(dump / "rank0.pt", weights_only=True)
    r1 = torch.load(dump / "rank1.pt", weights_only=True)
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    # 8 subjects, 2 epochs: each rank saw 4 per epoch, the two halves disjoint and complete
    for epoch in range(2):
        a = set(r0["seen"][4 * epoch:4 * epoch + 4])
        b = set(r1["seen"][4 * epoch:4 * epoch + 4])
        assert len(a) == len(b) == 4 and not a & b and a | b == set(range(8))
    assert r0["counters"]["optimizer_steps"] == 4  # 4 micro-batches per rank per epoch / 2
    assert (tmp_path / "run" / "last.pt").is_file()

    # one process, accumulating 4 micro-batches per step, sees the same groups of samples
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(str(cfg), ["ddmr.Trainer.accumulate = 4"], run_dir=tmp_path / "single", device="cpu")
    finally:
        torch.set_num_threads(threads)
    for k, v in single.model.state_dict().items():
        assert torch.allclose(v, r0["model"][k], atol=1e-4, rtol=0), k
    # without DDP (2 steps per epoch) the weights would differ by far more
    assert single.counters["optimizer_steps"] == 4
