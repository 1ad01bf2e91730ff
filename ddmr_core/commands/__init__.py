"""One module per ``ddmr`` sub-command (see :mod:`ddmr_core.cli`)."""
