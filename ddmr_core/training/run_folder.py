"""A training run's folder: checked before any work, and the run's copy of its operative
config (``config.gin``), which ``train`` writes and never over a user's file.

The folder holds ``config.gin``, ``last.pt``, ``best.pt``
(:func:`ddmr_core.model.checkpoint.training_state`) and TensorBoard events under ``logs/``
(:mod:`ddmr_core.training.log`).
"""

from __future__ import annotations

from pathlib import Path

from ..config.parsing import config_text
from ..data.files import check_output_folder, write_text_atomic
from ..errors import DdmrError

#: the run's copy of its operative config, and the first line that marks it as ddmr's
CONFIG_COPY = "config.gin"
CONFIG_HEADER = "# ddmr train: the operative gin config of this run (written by ddmr, replaced on --resume)\n"


def check_config_copy(run_dir: Path) -> None:
    """Refuse a run folder whose ``config.gin`` ddmr did not write (say, the user's own
    config, trained with ``--out`` its folder): ``train`` writes its copy there, and never
    over a user's file. A copy ddmr wrote starts with :data:`CONFIG_HEADER`; in a folder
    holding a run (``last.pt`` or ``best.pt``, e.g. from before the header) it is ddmr's."""
    path = Path(run_dir) / CONFIG_COPY
    if not path.exists() or any((Path(run_dir) / n).exists() for n in ("last.pt", "best.pt")):
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        first = ""
    if first != CONFIG_HEADER:
        raise DdmrError(f"run directory {str(run_dir)!r} holds a {CONFIG_COPY} that ddmr did not write (your "
                        f"config?); ddmr train writes the run's config there and never over your file: give a "
                        "new folder or a ddmr run folder as --out")


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """A folder, or one that can be created, and writable; holding no run unless
    ``resume``; no user's ``config.gin`` (:func:`check_config_copy`). Checked before any
    work; the folder is written (created) only once every input is valid."""
    run_dir = Path(run_dir)
    check_output_folder(run_dir, "run directory", replace=False)
    if not resume and any((run_dir / n).exists() for n in ("last.pt", "best.pt")):
        raise DdmrError(
            f"run directory {str(run_dir)!r} already holds a training run; pass --resume to "
            "continue it or choose another --out"
        )
    check_config_copy(run_dir)


def write_config_copy(run_dir: Path) -> None:
    """Create the folder and write the operative gin config into it (atomically)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_COPY, CONFIG_HEADER + config_text())
