"""Safety layer between the policy and every arm driver: limits from config, the per-tick filter, the watchdog
and the supervisor that combines them with the operator's resume and e-stop. See docs/safety.md."""

from pirl_robot.safety.config import (GripperLimits, JointLimits, SafetyConfig, SafetyConfigError, StartConfig,
                                      WatchdogConfig, WorkspaceBox, load_safety_config)
from pirl_robot.safety.events import EventBus, SafetyEvent
from pirl_robot.safety.filter import Mode, SafetyFilter, TickResult
from pirl_robot.safety.kinematics import EndEffectorFK
from pirl_robot.safety.supervisor import SafetySupervisor
from pirl_robot.safety.watchdog import Fault, Watchdog

__all__ = ["EndEffectorFK", "EventBus", "Fault", "GripperLimits", "JointLimits", "Mode", "SafetyConfig",
           "SafetyConfigError", "SafetyEvent", "SafetyFilter", "SafetySupervisor", "StartConfig", "TickResult",
           "Watchdog", "WatchdogConfig", "WorkspaceBox", "load_safety_config"]
