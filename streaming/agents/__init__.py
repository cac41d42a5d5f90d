"""The worker's Faust agents, one module each: :mod:`streaming.agents.ingest` over ``events``
(with its attribution timer and rebalance hooks) and :mod:`streaming.agents.score` over
``score-requests``."""
