"""What the front-ends share: the ``rlreg`` command (``cli``), QC pictures (``qc``), the panels' state
machine (``panel_state``, no torch) and display helpers (``display``), and the command's allocator setting."""
