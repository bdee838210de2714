#!/usr/bin/env bash
# Several nodes from a DeepSpeed hostfile (`hostname slots=N` per line), over pdsh/ssh (the default) or
# Open MPI. Run it on any host that reaches the others by ssh without a password; the checkout and the
# Python environment must be at the same path on every host (a shared filesystem, or the same image).
#   export SAVE_DIR=/shared/runs/cp HOSTFILE=hosts
#   bash launch/multi_node.sh --config configs/codeparrot_zero2.json --ds_config ds_configs/zero2.json \
#       --set train.save_dir=$SAVE_DIR
#   LAUNCHER=openmpi IFACE=ib0 bash launch/multi_node.sh ...
#
# HOSTFILE     the hostfile (default: ./hostfile); checked first by codeparrot-preflight
# LAUNCHER     pdsh (default) or openmpi
# IFACE        the network interface (or CIDR subnet) the ranks talk over: Open MPI's TCP transports are
#              restricted to it (DeepSpeed's default, eth0, fails where eth0 does not exist) and gloo/NCCL
#              use it too
# MASTER_ADDR  rank 0's address as the other hosts reach it (default: the first host's, from `hostname -I`
#              there); MASTER_PORT: default a free port on the first host, chosen once here
#              (launch/ports.py) and used by both the preflight checks and the launch
# SAVE_DIR     the run's train.save_dir: codeparrot-preflight first checks every host (ssh, versions,
#              master port, that SAVE_DIR is the same directory everywhere, interfaces)
# PREFLIGHT=0  skip those checks
# The environment the remote ranks need (PATH, OMP_NUM_THREADS, ...) goes to them in a .deepspeed_env that
# codeparrot-launch writes. Ctrl-C or SIGTERM: every rank on every host saves and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
HOSTFILE=${HOSTFILE:-hostfile}
LAUNCHER=${LAUNCHER:-pdsh}
args=(--hostfile "$HOSTFILE" --launcher "$LAUNCHER")
if [ -n "${MASTER_ADDR:-}" ]; then args+=(--master_addr "$MASTER_ADDR"); fi
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -m launch.ports --hostfile "$HOSTFILE")}
args+=(--master_port "$MASTER_PORT")
if [ -n "${IFACE:-}" ] && [[ "$IFACE" != */* ]]; then
  export GLOO_SOCKET_IFNAME=$IFACE NCCL_SOCKET_IFNAME=$IFACE
fi
if [ "$LAUNCHER" = openmpi ]; then
  # Without these Open MPI's TCP transports try every interface, and DeepSpeed adds eth0 where none is given.
  IFACE=${IFACE:?set IFACE to the interface or subnet the hosts reach each other over, e.g. IFACE=ib0}
  args+=(--launcher_args "--mca btl_tcp_if_include $IFACE --mca oob_tcp_if_include $IFACE")
fi
if [ "${PREFLIGHT:-1}" != 0 ]; then
  if [ -z "${SAVE_DIR:-}" ]; then
    echo "multi_node.sh: set SAVE_DIR to the run's train.save_dir, so every host is checked first" \
      "(PREFLIGHT=0 skips the checks)" >&2
    exit 2
  fi
  "$PYTHON" -m launch.preflight --hostfile "$HOSTFILE" --save-dir "$SAVE_DIR" --launcher "$LAUNCHER" \
    --master-port "$MASTER_PORT" ${MASTER_ADDR:+--master-addr "$MASTER_ADDR"} \
    ${IFACE:+--launcher-args "--mca btl_tcp_if_include $IFACE --mca oob_tcp_if_include $IFACE"}
fi
exec "$PYTHON" -m launch.run "${args[@]}" pretrain_gpt.py "$@"
