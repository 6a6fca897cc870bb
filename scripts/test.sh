#!/usr/bin/env bash
# Run the test suite (the default run excludes tests marked slow). Sets the project up first if needed.
#   bash scripts/test.sh                 # default suite
#   bash scripts/test.sh -m slow         # the long runs
#   bash scripts/test.sh tests/test_flow_math.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import pirl_robot, mani_skill, rclpy" 2>/dev/null || bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest "$@"
