"""The ddmr command line: help, version, plugins listing, clean errors."""

import json
import subprocess
import sys

import pytest

from ddmr_core import __version__

from conftest import run_cli


def test_help_and_version():
    out = run_cli("--help")
    assert out.returncode == 0 and "plugins" in out.stdout
    out = run_cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_plugins_lists_builtins_as_json():
    out = run_cli("plugins", "--json", env_extra={"DDMR_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    synthetic = [r for r in rows if r["name"] == "synthetic"]
    assert synthetic == [{"kind": "datasets", "name": "synthetic", "gin": "ddmr.datasets.synthetic",
                          "plugin": "builtin_datasets", "distribution": "ddmr"}]


def test_plugins_kind_filter_and_table():
    out = run_cli("plugins", "--kind", "datasets")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["KIND", "NAME", "DISTRIBUTION"]
    assert all(line.startswith("datasets") for line in lines[1:])


def test_third_party_plugin_shows_in_ddmr_plugins(third_party_site):
    out = run_cli("plugins", "--json", env_extra={"PYTHONPATH": str(third_party_site)})
    assert out.returncode == 0, out.stderr
    rows = {(r["kind"], r["name"]): r["distribution"] for r in json.loads(out.stdout)}
    assert rows[("losses", "tversky")] == "ddmr-example-plugin"
    assert rows[("augmenters", "gaussian_noise")] == "ddmr-example-plugin"


def test_unknown_kind_is_a_usage_error():
    out = run_cli("plugins", "--kind", "nosuch")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_broken_plugin_gives_one_line_error_without_traceback(tmp_path):
    dist = tmp_path / "broken_ddmr_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-ddmr-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ddmr]\nbroken = broken_ddmr_module\n")
    (tmp_path / "broken_ddmr_module.py").write_text("raise ImportError('missing dependency foo')\n")
    out = run_cli("plugins", env_extra={"PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert out.stderr.startswith("ddmr: error: plugin 'broken'") and "Traceback" not in out.stderr
    out = run_cli("--debug", "plugins", env_extra={"PYTHONPATH": str(tmp_path)})
    assert "Traceback" in out.stderr


def test_command_table_lists_every_command_module():
    """COMMANDS is the one list of commands: every module of the package is in it once,
    and each module has what the parser calls."""
    import importlib
    import pkgutil

    from ddmr_core import commands

    modules = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    listed = [module for _, module, _ in commands.COMMANDS]
    assert sorted(listed) == sorted(modules)
    assert len({name for name, _, _ in commands.COMMANDS}) == len(listed)
    for module in listed:
        mod = importlib.import_module(f"ddmr_core.commands.{module}")
        assert callable(mod.add_arguments) and callable(mod.run)


@pytest.mark.parametrize("argv, heavy", [
    (["--help"], ("torch", "monai", "ants", "flask", "matplotlib")),
    (["register", "--help"], ("torch", "monai", "ants", "flask", "matplotlib")),
    (["warp", "--help"], ("monai", "ants", "flask")),
])
def test_help_imports_only_what_the_command_needs(argv, heavy):
    """`ddmr --help` and one command's help import that command's module alone: none of
    torch's stack, MONAI, ANTs, Flask (the start-up a user pays on every call)."""
    code = ("import sys; from ddmr_core.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('LOADED:', *[m for m in {heavy!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: ddmr" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "LOADED:"


def test_loading_a_model_for_inference_imports_no_monai_or_dynamo():
    """A model built to register (``Registrar``) computes no loss, so MONAI (behind the
    loss plugins) is not imported; nor is torch._dynamo, which random or arange fills
    of the checkpoint's meta-device shape probe would import. Each costs a second or more
    of every `ddmr register`."""
    code = ("import sys; from ddmr_core.registration.register import Registrar; Registrar('brain-mr')\n"
            "print('LOADED:', *[m for m in ('monai', 'torch._dynamo') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "LOADED:"


def test_register_command_defaults_match_the_library():
    """commands/register.py restates three defaults so that `ddmr register --help` need not
    import the library: they must stay the library's."""
    from ddmr_core.commands import register as command
    from ddmr_core.registration import output, register

    assert command.DEFAULT_OUTPUTS == output.DEFAULT_OUTPUTS
    assert command.AUTO_REFINE_ITERATIONS == register.AUTO_REFINE_ITERATIONS
    assert command.CROSS_CONTRAST_REFINE_ITERATIONS == register.CROSS_CONTRAST_REFINE_ITERATIONS


@pytest.mark.parametrize("preset", [None, "0"])
def test_a_ddmr_process_backs_torch_allocations_with_huge_pages_unless_told_otherwise(preset):
    # set before torch is imported (the allocator reads it once); a value the user set wins
    import os

    code = ("import os, sys\nfrom ddmr_core.cli import main\nassert 'torch' not in sys.modules\n"
            "main([])\nprint(os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert proc.stdout.strip().splitlines()[-1] == (preset or "1")


def _entry_process(tmp_path, body: str, argv) -> subprocess.CompletedProcess:
    """A process that runs ``body`` and then the ``ddmr`` console script on ``argv``."""
    code = (f"import atexit, sys, threading, time, weakref\nfrom pathlib import Path\nT = Path({str(tmp_path)!r})\n{body}\n"
            f"sys.argv = ['ddmr', *{list(argv)!r}]\nfrom ddmr_core.cli import entry\nentry()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_console_script_ends_with_exit_handlers_run_and_streams_flushed(tmp_path):
    """`ddmr` skips Python's module teardown at exit, but nothing a user relies on: the
    exit handlers and finalizers (temporary folders' removal) run, the whole output
    reaches a pipe, and the exit status is the command's."""
    body = ("atexit.register(lambda: (T / 'atexit').write_text('ran'))\n"
            "class Box: pass\nbox = Box()\nweakref.finalize(box, lambda: (T / 'finalize').write_text('ran'))\n")
    proc = _entry_process(tmp_path, body, ["models"])
    assert proc.returncode == 0, proc.stderr
    assert "brain-mr" in proc.stdout and proc.stdout.endswith("\n")
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "finalize").read_text() == "ran"
    bad = _entry_process(tmp_path, "", ["register", "--fixed", str(tmp_path / "no.nii.gz"),
                                        "--moving", str(tmp_path / "no.nii.gz"), "--model", "brain-mr",
                                        "--out", str(tmp_path / "out")])
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("ddmr: error: ")


def test_the_console_script_waits_for_a_running_thread(tmp_path):
    """With a (non-daemon) thread still running when the command returns, `ddmr` exits the
    normal way, which waits for it, instead of cutting it off."""
    # the thread writes once the main thread has finished (whenever the command returns)
    body = ("def late():\n    while threading.main_thread().is_alive():\n        time.sleep(0.01)\n"
            "    time.sleep(0.2)\n    (T / 'thread').write_text('done')\n"
            "threading.Thread(target=late).start()\n")
    proc = _entry_process(tmp_path, body, ["models"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "thread").read_text() == "done"


def test_a_failed_register_keeps_no_prefetched_inputs(tmp_path):
    """ddmr register reads its inputs in the background from the start; a run that fails
    before reading them (here: an --out folder holding someone else's file) drops those
    bytes, so a process running commands in-process does not keep them."""
    import numpy as np

    from ddmr_core.cli import main
    from ddmr_core.data import prefetch
    from ddmr_core.data.io import save_image

    image = tmp_path / "f.nii.gz"
    save_image(image, np.random.default_rng(0).random((8, 9, 10)).astype(np.float32), np.eye(4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["register", "--fixed", str(image), "--moving", str(image), "--model", "brain-mr",
                 "--out", str(out)])
    assert code != 0
    assert prefetch._pending == {}
    assert (out / "notes.txt").read_text() == "mine"
