"""Training of learned policies: synthetic data (``data``), the registration environment (``environment``),
the config (``config``), the registration loss (``losses``), soft actor-critic on plans (``sac``), GRPO for
MorphSeek (``grpo``), the family trainers (``family_trainer``, ``spac_trainer``, ``morphseek_trainer``),
distributed helpers (``distributed``), validation (``validation``), run log / checkpoints / model folder
(``run_log``), the training loop / ``rlreg train`` (``train``) and stage (c) ``rlreg tune-weight-map``
(``weight_map``). Not imported by the registration path (session, policies)."""
