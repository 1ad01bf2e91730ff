"""The ddmr command line: help, version, plugins listing, clean errors."""

import json

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
