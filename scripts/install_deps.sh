#!/usr/bin/env bash
# Installs the Debian packages the project builds and runs with, if any is missing.
# Idempotent and quiet when everything is there.
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config python3 python3-pip python3-venv
  libeigen3-dev nlohmann-json3-dev doctest-dev libcli11-dev libpcre2-dev libbenchmark-dev
  libopenblas-dev libopenblas0-openmp libdnnl-dev libboost-context-dev
  openmpi-bin libopenmpi-dev
  clang libclang-rt-dev libomp-dev
  bible-kjv bible-kjv-text
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# A python3 that is not Debian's (e.g. pyenv) brings its own pip and venv.
if command -v python3 > /dev/null && python3 -m pip --version > /dev/null 2>&1; then
  missing=("${missing[@]/python3-pip}")
  missing=("${missing[@]/python3-venv}")
  missing=("${missing[@]/python3}")
fi
read -r -a missing <<< "${missing[*]}"
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
