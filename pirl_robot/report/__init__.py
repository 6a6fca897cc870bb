"""`pirl report`: success rates with Wilson intervals, interventions, latencies, plots and a one-page summary of
recorded evaluations (stats.py: the definitions; plots.py; cli.py)."""
