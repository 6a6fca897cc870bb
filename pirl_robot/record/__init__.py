"""Recording real (and HIL) evaluations: one crash-safe LeRobotDataset per episode, sidecars, Rerun.

recorder.py (taps -> journal -> commit), journal.py, commit.py, schema.py (what goes where), episodes.py
(reading back), rerun_log.py (one Rerun layout everywhere), ros.py (the deploy node's side: parameters,
~/episode_outcome; the y/n keys of `pirl deploy` are in deploy/operator_keys.py), sim_eval.py (the same Rerun
logging in `pirl eval`). See docs/record_replay.md.
"""
