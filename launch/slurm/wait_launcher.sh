# Sourced by the training sbatch scripts: wait_launcher PID waits until PID (the launch command, started
# with &) has exited and sets rc to its own exit status.
#
# `wait` returns early, with 128 + the signal, whenever a trapped signal arrives (the script's USR1 and TERM
# traps), and the launcher may exit while the trap runs. The loop waits again while it is alive; the last
# `wait` then returns the status bash recorded for it, so a launcher that saved and exited 0 during the
# trap is requeued, and one that failed is reported as it failed, never as "138". (bash < 5.1 answers 127
# to a second wait for a pid already waited for: the status from the loop is kept then.)
wait_launcher() {
  local pid=$1 last
  while true; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  wait "$pid" 2>/dev/null; last=$?
  if [ "$last" != 127 ]; then rc=$last; fi
}
