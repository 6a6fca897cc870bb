"""pirl-robot: online RL for flow-matching VLA policies, from simulation to a real arm."""
__version__ = "0.1.0"
