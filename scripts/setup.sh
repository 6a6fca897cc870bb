#!/usr/bin/env bash
# Set up pirl-robot on a fresh Debian 12 machine (CPU or GPU): system packages, a Python 3.12 venv in .venv,
# the pinned Python stack, and this package in editable mode. Safe to run again.
#   bash scripts/setup.sh            # everything (ManiSkill, ROS 2 wheels, LIBERO, RealSense, test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PIRL_VENV:-.venv}
PY=${PIRL_PYTHON:-}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- system packages -------------------------------------------------------------------------------------
# ManiSkill (SAPIEN) needs Vulkan even for state observations. Debian 12's lavapipe (Mesa 22) is rejected by
# SAPIEN; Mesa 25 from bookworm-backports works on the CPU. pyrealsense2 needs libusb. MuJoCo (LIBERO) renders
# with EGL/OSMesa.
need_apt=0
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! dpkg -s libusb-1.0-0 >/dev/null 2>&1 \
   || ! dpkg -s libosmesa6 >/dev/null 2>&1; then need_apt=1; fi
if [ "$need_apt" = 1 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if grep -qs bookworm /etc/os-release && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports (Mesa 25 for Vulkan on the CPU)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null
  fi
  log "apt: mesa-vulkan-drivers libvulkan1 libusb-1.0-0 libegl1 libosmesa6"
  $SUDO apt-get update -qq
  if grep -qs bookworm /etc/os-release; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libegl1 libgl1 libosmesa6 ffmpeg >/dev/null
fi

# --- Python 3.12 venv --------------------------------------------------------------------------------------
if [ -z "$PY" ]; then
  for cand in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3.12"; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2]==(3,12)' 2>/dev/null; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "Python 3.12 not found (lerobot 0.6 requires it). Set PIRL_PYTHON=/path/to/python3.12" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
log "installing the pinned Python stack (first run: several minutes, ~6 GB)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[ros,realsense,libero,serve,test]"
log "done: $("$VENV/bin/python" -c 'import torch, lerobot, mani_skill; print("torch", torch.__version__, "| lerobot", lerobot.__version__ if hasattr(lerobot, "__version__") else "?", "| mani_skill", mani_skill.__version__)')"
