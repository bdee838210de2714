#!/usr/bin/env bash
# Submit codeparrot-preprocess as a SLURM job array, in four jobs chained by --dependency=afterok (a job
# starts once the one before has succeeded); run on the login node:
#
#   bash launch/slurm/preprocess.sh --tasks 16 --work /shared/work --output /shared/data \
#       [--sbatch "--partition=cpu --time=08:00:00"] -- --input /shared/corpus --vocab-size 32768
#
#   scan    array 0..N-1  read, filter and hash a share of the inputs
#   keep    one job       find duplicates across all shares, train the tokenizer
#   encode  array 0..N-1  tokenise a share's kept documents into shards
#   merge   one job       gather the shards into one dataset in --output (with manifest.json)
#
# After `--`: the flags of codeparrot-preprocess but --output, passed to every phase (see
# data_tools/array_job.py). --sbatch: options added to every sbatch call, after the defaults, so they win;
# sbatch's own environment variables (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...) apply too.
# The jobs run ${PYTHON:-python3} -m data_tools.array_job with this repository on PYTHONPATH, in the
# current directory; their logs go to <work>/logs/. A failed job cancels the ones after it: fix the cause
# and run the same command again (tasks that finished are skipped).
set -euo pipefail

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
tasks="" work="" output="" extra=()
while (($#)); do
  case $1 in
    --tasks) tasks=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --sbatch) read -r -a more <<<"$2"; extra+=("${more[@]}"); shift 2 ;;
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (codeparrot-preprocess flags go after --)" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z $tasks || -z $work || -z $output ]]; then
  echo "error: --tasks, --work and --output are required" >&2; usage >&2; exit 2
fi
if ! [[ $tasks =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --tasks ($tasks) must be a positive number" >&2; exit 2
fi
command -v sbatch >/dev/null || { echo "error: sbatch not found: run this on a SLURM login node" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$(cd "$here/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"  # sbatch passes the environment on
logs="$work/logs"
mkdir -p "$logs"
flags=(--tasks "$tasks" --work "$work" --output "$output" "$@")

# submit PHASE ARRAY AFTER: submit one phase (an array when ARRAY is set, after job AFTER when set); print
# "PHASE ID". On failure, say which jobs were submitted already, and stop.
submitted=()
submit() {
  local opts=(--parsable --job-name="preprocess-$1" --kill-on-invalid-dep=yes) id
  if [[ -n $2 ]]; then opts+=(--array="$2" --output="$logs/%x-%A_%a.out"); else opts+=(--output="$logs/%x-%j.out"); fi
  if [[ -n $3 ]]; then opts+=(--dependency="afterok:$3"); fi
  if ! id=$(sbatch "${opts[@]}" ${extra[@]+"${extra[@]}"} "$here/preprocess.sbatch" "$1" "${flags[@]}") ||
    ! [[ ${id%%;*} =~ ^[0-9]+$ ]]; then  # --parsable prints "id" or "id;cluster"
    echo "error: sbatch failed for the $1 phase (it printed: ${id:-nothing})." >&2
    if ((${#submitted[@]})); then echo "Cancel the jobs submitted before it: scancel ${submitted[*]}" >&2; fi
    exit 1
  fi
  submitted+=("${id%%;*}")
  echo "$1 ${id%%;*}"
}

submit scan "0-$((tasks - 1))" ""
submit keep "" "${submitted[-1]}"
submit encode "0-$((tasks - 1))" "${submitted[-1]}"
submit merge "" "${submitted[-1]}"
echo "logs in $logs; the dataset will be in $output (squeue -u \$USER to follow)"
