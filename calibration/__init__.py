"""Camera calibration for pirl-robot: intrinsics, hand-eye, the calibration file, capture, and checks.

    pirl calibrate board --out board.png                                  # print this board
    pirl calibrate capture --camera realsense: --out calib/session1       # images + joint states, one per pose
    pirl calibrate intrinsics calib/session1 --out calib/base_camera.yaml
    pirl calibrate handeye calib/session1 --intrinsics calib/base_camera.yaml --mount eye_to_hand \\
        --out calib/base_camera.yaml
    pirl calibrate check calib/base_camera.yaml --image calib/session1/000.png --out overlay.png

| module | role |
|---|---|
| `board.py` | ChArUco / checkerboard description, detection (OpenCV), board images for printing |
| `intrinsics.py` | OpenCV camera calibration with bad-view rejection (each with its reason) |
| `handeye.py` | eye-in-hand / eye-to-hand with cv2.calibrateHandEye and cv2.calibrateRobotWorldHandEye, several methods, residuals compared; degenerate pose sets refused |
| `poses.py` | rigid transforms (4x4, rvec/tvec, quaternions) and the arm's end-effector pose from the URDF |
| `calib_file.py` | the calibration YAML: a ROS camera_info part and the camera pose with frames and units named |
| `capture.py` | a folder of images + poses, or live capture through the deploy drivers and /joint_states |
| `synthetic.py` | rendered board views with known intrinsics, distortion and poses (tests, docs) |
| `overlay.py` | the sim twin's render laid over a real frame (`pirl calibrate check`) |

Frames: OpenCV's optical camera frame (x right, y down, z forward), the robot base frame of the URDF
(panda_link0), the end-effector link of the safety config (panda_hand_tcp). Lengths in metres, angles in radians
(degrees only in printed residuals), pixels with (0, 0) at the centre of the top-left pixel.
"""

from calibration.board import Board, BoardError, Detection
from calibration.calib_file import CalibrationFile, CalibrationFileError, load_calibration
from calibration.handeye import HandEyeError, HandEyeResult, solve_hand_eye
from calibration.intrinsics import CalibrationError, IntrinsicsResult, calibrate_intrinsics

__all__ = ["Board", "BoardError", "CalibrationError", "CalibrationFile", "CalibrationFileError", "Detection",
           "HandEyeError", "HandEyeResult", "IntrinsicsResult", "calibrate_intrinsics", "load_calibration",
           "solve_hand_eye"]
