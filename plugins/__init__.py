"""ddmr's built-in plugins (installed as the package ``ddmr_plugins``).

Each sub-package is an ordinary plugin, announced in ``setup.cfg`` under the ``ddmr``
entry-point group exactly as a third-party plugin would be, with hooks marked
``trylast`` so that third-party implementations are called first.
"""
