"""``ddmr serve`` as a command: Flask stays out of ``ddmr --help``, bad models are one
line, and a real server process answers on 127.0.0.1 and cleans up on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from ddmr_core.cli import main


def test_help_does_not_import_flask():
    code = ("import sys; from ddmr_core.cli import build_parser; build_parser().format_help(); "
            "print('flask' in sys.modules, 'werkzeug' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_serve_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--model", "--max-upload-mb", "127.0.0.1"):
        assert option in out


def test_unknown_model_is_one_line_before_serving(capsys, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["serve", "--model", "brain_mr", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddmr: error:") and "brain-mr" in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # no folder left behind


def test_bad_port_is_refused(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_a_real_server_on_loopback_removes_its_folders_on_sigterm(tiny_workspace, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "ddmr_core", "serve", "--model", tiny_workspace["good"],
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        end = time.monotonic() + 180
        while url is None and time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("ddmr serve: http://"):
                url = line.split()[2]
        assert url is not None, proc.stderr.read() if proc.poll() is not None else "no URL printed"
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        models = json.loads(urllib.request.urlopen(url + "api/models", timeout=30).read())
        assert models["default"] == "good.pt"  # a checkpoint is shown by its file name only
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ddmr-serve-")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("ddmr-")]
