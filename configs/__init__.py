"""Shipped gin configs (installed as the package ``ddmr_configs``); see README in this folder."""
