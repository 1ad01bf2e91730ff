"""Exact resume: 2 epochs straight == 1 epoch, SIGKILL, ``--resume`` (CPU, within 1e-6).

Runs ``ddmr train`` as a real subprocess with the real ``vxm_unet`` (tiny widths), real
losses and the real ``tps`` augmenter on synthetic 16^3 phantoms.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import TINY_TRAINING

CONFIG = TINY_TRAINING + """

ddmr.datasets.synthetic.subjects = (16, 2, 1)
ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'dice': @ddmr.losses.dice(), 'grad_l2': @ddmr.losses.grad_l2()}
ddmr.augmenters.tps.max_displacement = 2.0
ddmr.Trainer.max_epochs = 2
"""


def _cmd(cfg, out, *extra):
    return [sys.executable, "-m", "ddmr_core", "train", str(cfg), "--out", str(out), "--device", "cpu", *extra]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # same arithmetic in every process
    return env


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_sigkill_then_resume_matches_straight_run(tmp_path):
    cfg = tmp_path / "exp.gin"
    cfg.write_text(CONFIG)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    r = subprocess.run(_cmd(cfg, straight), capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(_cmd(cfg, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    last = killed / "last.pt"
    deadline = time.time() + 240
    while not last.exists():  # the first last.pt is written at the end of epoch 1
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["counters"]["epoch"] == 1, "the kill came after epoch 2 ended; the test did not interrupt the run"

    r = subprocess.run(_cmd(cfg, killed, "--resume"), capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = _weights(straight / "last.pt"), _weights(killed / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    ca = torch.load(straight / "last.pt", weights_only=True)["counters"]
    cb = torch.load(killed / "last.pt", weights_only=True)["counters"]
    # the wall-clock counter is the one that may differ (the killed run also spent the time it lost)
    assert ca.pop("train_seconds") > 0 and cb.pop("train_seconds") > 0
    assert ca == cb and ca["epoch"] == 2 and ca["optimizer_steps"] == 16  # 16 samples / 2 per step, 2 epochs
    # the optimiser moments were restored too, not rebuilt
    oa = torch.load(straight / "last.pt", weights_only=True)["optimizer"]["state"]
    ob = torch.load(killed / "last.pt", weights_only=True)["optimizer"]["state"]
    for k in oa:
        assert torch.allclose(oa[k]["exp_avg_sq"], ob[k]["exp_avg_sq"], atol=1e-9, rtol=0)
    # and the run did change the weights (a resume that loaded nothing would not match anyway)
    assert (Path(killed) / "config.gin").is_file()
