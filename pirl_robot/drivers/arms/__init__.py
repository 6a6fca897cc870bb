"""Arms behind one interface: connect(), read_state(max_age_ms), send(targets) -> applied, disconnect().

Drivers: Ros2ControlArm (any ros2_control arm: JointState in, JointTrajectory / Float64MultiArray out),
LeRobotArm (lerobot Robot classes, e.g. the SO-101 follower), ManiSkillArm (simulated Panda, served over ROS by
the sim arm node so the deploy node sees it exactly like hardware).
"""

from pirl_robot.drivers.arms.base import Arm, ArmError, JointSample, StaleStateError

__all__ = ["Arm", "ArmError", "JointSample", "StaleStateError"]
