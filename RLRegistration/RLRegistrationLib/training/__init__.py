"""Training of learned policies: synthetic data (``data``), soft actor-critic on plans (``sac``) and the
training loop / ``rlreg train`` (``train``). Not imported by the registration path (session, policies)."""
