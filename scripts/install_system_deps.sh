#!/usr/bin/env bash
# Installs the Debian packages the project needs (Open MPI for mpi4py; g++/ninja for DeepSpeed's JIT ops;
# sshd, pdsh, SLURM, munge and iproute2 for the simulated clusters of tests/cluster).
# Does nothing when they are already present. Needs root and apt-get; otherwise prints what to install.
set -euo pipefail
pkgs=(openmpi-bin libopenmpi-dev g++ ninja-build numactl
      openssh-server openssh-client pdsh slurmd slurmctld slurm-client munge iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
