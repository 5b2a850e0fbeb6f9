"""A registration run: what it is (``run_spec``: the user's choices, validated, turned into a policy and
session options), its presets (``quality``), memory estimate (``memory``), linear pre-alignment
(``prealign``), the step-wise session (``session``) and a worker thread for panels (``worker``)."""
