#!/usr/bin/env bash
# Launches jhpe experiments: hyper-parameter sweeps over local GPUs, one run over all local
# devices, or one process of a multi-host run through jax.distributed.
#
#   ./launch.sh sweep EXPERIMENT FLAGFILE WORKROOT [--grid 'flag=v1,v2' ...] [--gpus 0,1]
#                     [--dry_run] [--no_validate] [-- extra flags]
#       One run per point of the cartesian product of the grids, in WORKROOT/<flag=v,...>,
#       its output in <workdir>/log.txt. Each run gets one GPU (CUDA_VISIBLE_DEVICES); when
#       there are more runs than GPUs the rest wait in a queue for the first GPU to free.
#       GPUs: --gpus, else CUDA_VISIBLE_DEVICES, else every GPU `nvidia-smi -L` lists, else
#       one slot on the CPU (runs one after the other). At the end, a table of every run:
#       status (done, stopped at step N/M, failed), best evaluation and its step, the last
#       step, the wall time (experiments/sweep_summary.py). The same command again resumes
#       the runs that stopped.
#
#   Example: two learning rates x two sigmas, one run per GPU:
#     ./launch.sh sweep hourglass experiments/configs/lsp_hourglass.flags workdirs/sweep \
#         --grid 'learning_rate=1e-3,2.5e-4' --grid 'sigma=1,2'
#
#   ./launch.sh local EXPERIMENT FLAGFILE WORKDIR [--dry_run] [--no_validate] [-- extra flags]
#       One run over all local devices, output also in WORKDIR/log.txt.
#   ./launch.sh multihost EXPERIMENT FLAGFILE WORKDIR [--num_processes N]
#                     [--coordinator HOST:PORT] [--process_id I] [--local_test] [--dry_run]
#                     [--no_validate] [-- extra flags]
#       One process of a multi-host run (run this once per host, e.g. with srun), its
#       output also in WORKDIR/log.process<I>.txt. Under
#       SLURM the values default to SLURM_NTASKS, SLURM_PROCID and the first host of
#       SLURM_JOB_NODELIST (port as jax's SLURM cluster picks it); explicit flags win.
#       --local_test starts all N processes here on 127.0.0.1 (CPU backend), each logging
#       to WORKDIR/log.process<I>.txt: a multi-host run on one machine.
#
# EXPERIMENT names experiments/<EXPERIMENT>.py (hourglass, cpm, deeppose, evaluate), run as
# `$PYTHON -m experiments.<EXPERIMENT> --flagfile=FLAGFILE --workdir=DIR [flags]`; a dotted
# name (my_project.my_experiment) is run as that module. PYTHON defaults to python3.
# Flag order on the command line: the flagfile, the extra flags, then the grid values, so
# a grid value overrides both (absl: the last value of a flag wins).
# Before anything starts, every command is checked: the entry point parses its flags and
# config with --validate_only (no JAX, no data), so a mistyped flag or a bad value of any
# grid point stops the whole launch with one line naming the run and the flag, exit
# status 2. --no_validate skips the check (for a module without --validate_only).
# --dry_run checks, then prints the commands (environment included), one per line, and
# runs nothing.
# Ctrl-C or SIGTERM reaches the runs, which save a checkpoint and stop.
# Bad input: one line naming the problem, the usage, exit status 2.
# ./launch.sh --help prints this text.

set -uo pipefail

# The job queue needs `wait -n -p` (bash 5.1); macOS's /bin/bash is 3.2.
if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  echo "launch.sh: error: needs bash >= 5.1, found $BASH_VERSION (on macOS: brew install bash)" >&2
  exit 1
fi

readonly ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

usage() {
  cat >&2 <<'EOF'
usage: ./launch.sh sweep EXPERIMENT FLAGFILE WORKROOT [--grid 'flag=v1,v2' ...] [--gpus 0,1] [--dry_run] [-- flags]
       ./launch.sh local EXPERIMENT FLAGFILE WORKDIR [--dry_run] [-- flags]
       ./launch.sh multihost EXPERIMENT FLAGFILE WORKDIR [--num_processes N] [--coordinator HOST:PORT]
                   [--process_id I] [--local_test] [--dry_run] [-- flags]
EXPERIMENT: hourglass, cpm, deeppose, evaluate (experiments/<name>.py) or a dotted module name.
EOF
}

die() {  # Bad input: one line naming it, then the usage.
  echo "launch.sh: error: $*" >&2
  usage
  exit 2
}

# Prints a command as one line a shell can run again (each word quoted where needed).
quote_command() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(printf '%q' "$word")"
  done
  printf '%s' "$out"
}

# Turns "lr=0.1" words into a directory name: keeps [A-Za-z0-9._=,+-], the rest becomes _.
sanitise() {
  local name="${1//[^A-Za-z0-9._=,+-]/_}"
  [[ "$name" == .* ]] && name="_${name#.}"  # no hidden or '..' directories
  printf '%s' "$name"
}

# ---------------------------------------------------------------------------------------
# Arguments shared by every subcommand.

[[ $# -ge 1 ]] || die "missing subcommand (sweep, local or multihost)"
COMMAND="$1"; shift
case "$COMMAND" in
  sweep|local|multihost) ;;
  -h|--help|help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) die "unknown subcommand '$COMMAND' (expected sweep, local or multihost)" ;;
esac
[[ $# -ge 3 ]] || die "$COMMAND needs EXPERIMENT FLAGFILE $([[ $COMMAND == sweep ]] && echo WORKROOT || echo WORKDIR)"
EXPERIMENT="$1"; FLAGFILE="$2"; WORKDIR="$3"; shift 3

if [[ "$EXPERIMENT" == *.* ]]; then
  [[ "$EXPERIMENT" =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$ ]] \
    || die "EXPERIMENT '$EXPERIMENT' is not a Python module name"
  MODULE="$EXPERIMENT"
else
  [[ "$EXPERIMENT" =~ ^[A-Za-z_][A-Za-z0-9_]*$ && "$EXPERIMENT" != common \
     && -f "$ROOT/experiments/$EXPERIMENT.py" ]] \
    || die "unknown EXPERIMENT '$EXPERIMENT' (expected hourglass, cpm, deeppose or evaluate: a file experiments/<name>.py)"
  MODULE="experiments.$EXPERIMENT"
fi
[[ -f "$FLAGFILE" && -r "$FLAGFILE" ]] || die "FLAGFILE '$FLAGFILE' does not exist or is not a readable file"
[[ -n "$WORKDIR" ]] || die "empty $([[ $COMMAND == sweep ]] && echo WORKROOT || echo WORKDIR)"

GRIDS=(); GPUS=""; DRY_RUN=0; VALIDATE=1; EXTRA=()
NUM_PROCESSES=""; COORDINATOR=""; PROCESS_ID=""; LOCAL_TEST=0
need_value() { [[ $2 -ge 2 ]] || die "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
  option="$1"; value=""
  # Accept both "--option value" and "--option=value".
  if [[ "$option" == --*=* ]]; then value="${option#*=}"; option="${option%%=*}"; set -- "$option" "$value" "${@:2}"; fi
  case "$option" in
    --grid)          [[ $COMMAND == sweep ]] || die "--grid is for sweep only"
                     need_value "$option" $#; GRIDS+=("$2"); shift 2 ;;
    --gpus)          [[ $COMMAND == sweep ]] || die "--gpus is for sweep only"
                     need_value "$option" $#; GPUS="$2"; shift 2 ;;
    --num_processes) [[ $COMMAND == multihost ]] || die "--num_processes is for multihost only"
                     need_value "$option" $#; NUM_PROCESSES="$2"; shift 2 ;;
    --coordinator)   [[ $COMMAND == multihost ]] || die "--coordinator is for multihost only"
                     need_value "$option" $#; COORDINATOR="$2"; shift 2 ;;
    --process_id)    [[ $COMMAND == multihost ]] || die "--process_id is for multihost only"
                     need_value "$option" $#; PROCESS_ID="$2"; shift 2 ;;
    --local_test)    [[ $COMMAND == multihost ]] || die "--local_test is for multihost only"
                     LOCAL_TEST=1; shift ;;
    --dry_run)       DRY_RUN=1; shift ;;
    --no_validate)   VALIDATE=0; shift ;;
    --)              shift; EXTRA=("$@"); break ;;
    *)               die "unknown option '$1' (flags for the experiment go after --)" ;;
  esac
done

BASE_COMMAND=("$PYTHON" -m "$MODULE" "--flagfile=$FLAGFILE")
# `python -m experiments.X` must find this checkout even when it is not pip-installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Runs a command in the background with its output in a log file (and on the console when
# TEE=1), forwarding SIGTERM/SIGINT to it so that the trainer can save a preemption
# checkpoint; returns its exit status.
CHILDREN=()
forward_signal() {
  local pid
  for pid in "${CHILDREN[@]}"; do kill -TERM "$pid" 2>/dev/null; done
}
trap 'forward_signal; wait; exit 143' TERM
trap 'forward_signal; wait; exit 130' INT

# Checks a command's flags with the entry point's --validate_only; on a bad one prints a
# line naming the run ($1) and the entry point's own error, and exits 2 (nothing started).
validate_command() {
  local what="$1" output line; shift
  [[ $VALIDATE == 1 ]] || return 0
  if ! output="$(JAX_PLATFORMS=cpu "$@" --validate_only 2>&1)"; then
    line="$(grep -m 1 '^error:' <<< "$output" || tail -n 1 <<< "$output")"
    echo "launch.sh: error: $what: ${line#error: } (nothing was started; --no_validate skips this check)" >&2
    exit 2
  fi
}

# ---------------------------------------------------------------------------------------
# sweep

# Fills RUN_NAMES and RUN_FLAGS (one string of \x1f-separated flags per run) with the
# cartesian product of the grids.
expand_grid() {
  RUN_NAMES=(""); RUN_FLAGS=("")
  local grid flag values value i new_names new_flags
  local seen=" "
  for grid in "${GRIDS[@]}"; do
    [[ "$grid" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.+)$ ]] \
      || die "bad --grid '$grid' (expected 'flag=v1,v2,...', e.g. --grid 'learning_rate=1e-3,2.5e-4')"
    flag="${BASH_REMATCH[1]}"; values="${BASH_REMATCH[2]}"
    [[ "$seen" == *" $flag "* ]] && die "bad --grid '$grid': flag '$flag' is in two grids"
    seen+="$flag "
    [[ ",$values," == *,,* ]] && die "bad --grid '$grid': empty value"
    IFS=',' read -r -a values <<< "$values"
    new_names=(); new_flags=()
    for i in "${!RUN_NAMES[@]}"; do
      for value in "${values[@]}"; do
        new_names+=("${RUN_NAMES[$i]:+${RUN_NAMES[$i]},}$flag=$value")
        new_flags+=("${RUN_FLAGS[$i]:+${RUN_FLAGS[$i]}$'\x1f'}--$flag=$value")
      done
    done
    RUN_NAMES=("${new_names[@]}"); RUN_FLAGS=("${new_flags[@]}")
  done
}

# Fills SLOTS with the GPU ids runs are spread over ("" is one CPU slot).
detect_gpus() {
  local count i
  if [[ -n "$GPUS" ]]; then
    [[ "$GPUS" =~ ^[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*$ ]] \
      || die "bad --gpus '$GPUS' (expected comma-separated GPU ids, e.g. 0,1,2,3)"
    IFS=',' read -r -a SLOTS <<< "$GPUS"
  elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    # The GPUs this job was given (SLURM sets it); nvidia-smi would list all of them.
    IFS=',' read -r -a SLOTS <<< "$CUDA_VISIBLE_DEVICES"
  elif count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')" && [[ "$count" -gt 0 ]]; then
    SLOTS=()
    for ((i = 0; i < count; i++)); do SLOTS+=("$i"); done
  else
    SLOTS=("")
  fi
}

# The command of run $1 on slot $2, in RUN_COMMAND; its workdir in RUN_WORKDIR.
run_command() {
  local run="$1" slot="$2" name flags=()
  name="${RUN_NAMES[$run]}"
  RUN_WORKDIR="${WORKDIR%/}/$(sanitise "${name:-default}")"
  [[ -n "${RUN_FLAGS[$run]}" ]] && IFS=$'\x1f' read -r -a flags <<< "${RUN_FLAGS[$run]}"
  RUN_COMMAND=()
  [[ -n "$slot" ]] && RUN_COMMAND+=(env "CUDA_VISIBLE_DEVICES=$slot")
  RUN_COMMAND+=("${BASE_COMMAND[@]}" "--workdir=$RUN_WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"} ${flags[@]+"${flags[@]}"})
}

sweep() {
  expand_grid
  detect_gpus
  local num_runs=${#RUN_NAMES[@]} num_slots=${#SLOTS[@]} run slot
  local slot_names="${SLOTS[*]}"
  if [[ $VALIDATE == 1 ]]; then
    # All checks at once (each is a Python start-up), then the first failure in grid order.
    echo "# checking the flags of $num_runs run(s)..." >&2
    local checks pids=() output line
    checks="$(mktemp -d)"
    for ((run = 0; run < num_runs; run++)); do
      run_command "$run" ""
      (JAX_PLATFORMS=cpu "${RUN_COMMAND[@]}" --validate_only > "$checks/$run" 2>&1
       echo $? > "$checks/$run.status") &
      pids+=($!)
    done
    wait "${pids[@]}"
    for ((run = 0; run < num_runs; run++)); do
      if [[ "$(cat "$checks/$run.status")" != 0 ]]; then
        output="$(cat "$checks/$run")"; rm -rf "$checks"
        line="$(grep -m 1 '^error:' <<< "$output" || tail -n 1 <<< "$output")"
        echo "launch.sh: error: run '${RUN_NAMES[$run]:-default}': ${line#error: } (nothing was started; --no_validate skips this check)" >&2
        exit 2
      fi
    done
    rm -rf "$checks"
  fi
  echo "# sweep: $num_runs run(s) on $num_slots slot(s)${slot_names:+ (GPUs ${slot_names// /,})}; a queued run takes the first slot that frees" >&2
  if [[ $DRY_RUN == 1 ]]; then
    # The queue hands slots out in order while they are free, then as runs finish; the
    # dry run shows the assignment of runs that all take the same time.
    for ((run = 0; run < num_runs; run++)); do
      run_command "$run" "${SLOTS[run % num_slots]}"
      echo "$(quote_command "${RUN_COMMAND[@]}") > $(printf '%q' "$RUN_WORKDIR/log.txt") 2>&1"
    done
    return 0
  fi

  declare -A slot_of=() workdir_of=() run_of=() start_of=()
  local free=("${SLOTS[@]}") failed=() pid status summary=()
  for ((run = 0; run < num_runs || ${#slot_of[@]} > 0; )); do
    if ((run < num_runs && ${#free[@]} > 0)); then
      slot="${free[0]}"; free=("${free[@]:1}")
      run_command "$run" "$slot"
      mkdir -p "$RUN_WORKDIR" || die "cannot create workdir '$RUN_WORKDIR'"
      # Appended: a sweep launched again (after preemption) resumes and keeps the old log.
      echo "# $(quote_command "${RUN_COMMAND[@]}")" >> "$RUN_WORKDIR/log.txt"
      "${RUN_COMMAND[@]}" >> "$RUN_WORKDIR/log.txt" 2>&1 &
      pid=$!
      CHILDREN+=("$pid"); slot_of[$pid]="$slot"; workdir_of[$pid]="$RUN_WORKDIR"
      run_of[$pid]="$run"; start_of[$pid]="$SECONDS"
      echo "[launch] started ${RUN_WORKDIR}${slot:+ on GPU $slot} (pid $pid)" >&2
      ((run++))
      continue
    fi
    # Every slot is busy (or nothing is left to start): wait for any run to finish.
    pid=""
    wait -n -p pid "${!slot_of[@]}"; status=$?
    [[ -n "$pid" && -n "${slot_of[$pid]+x}" ]] || continue
    echo "[launch] finished ${workdir_of[$pid]} (exit status $status)" >&2
    ((status != 0)) && failed+=("${workdir_of[$pid]}")
    summary[${run_of[$pid]}]="${workdir_of[$pid]}"$'\x1f'"$status"$'\x1f'"$((SECONDS - start_of[$pid]))"
    free+=("${slot_of[$pid]}")
    unset "slot_of[$pid]" "workdir_of[$pid]" "run_of[$pid]" "start_of[$pid]"
    CHILDREN=("${!slot_of[@]}")
  done
  # The summary, in grid order: status, best evaluation, steps, time of every run.
  local args=() entry fields
  for ((run = 0; run < num_runs; run++)); do
    entry="${summary[$run]:-}"
    [[ -n "$entry" ]] || continue
    IFS=$'\x1f' read -r -a fields <<< "$entry"
    args+=("${fields[@]}")
  done
  echo "[launch] sweep summary ($WORKDIR):" >&2
  "$PYTHON" -m experiments.sweep_summary "${args[@]}" >&2 \
    || echo "[launch] (no summary: experiments.sweep_summary failed)" >&2
  if ((${#failed[@]} > 0)); then
    echo "[launch] ${#failed[@]} of $num_runs run(s) failed; see log.txt in: ${failed[*]}" >&2
    return 1
  fi
  echo "[launch] all $num_runs run(s) finished" >&2
}

# ---------------------------------------------------------------------------------------
# local

local_run() {
  local command=("${BASE_COMMAND[@]}" "--workdir=$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})
  validate_command "the run" "${command[@]}"
  if [[ $DRY_RUN == 1 ]]; then
    echo "$(quote_command "${command[@]}") 2>&1 | tee -a $(printf '%q' "${WORKDIR%/}/log.txt")"
    return 0
  fi
  mkdir -p "$WORKDIR" || die "cannot create workdir '$WORKDIR'"
  "${command[@]}" > >(tee -a "${WORKDIR%/}/log.txt") 2>&1 &
  CHILDREN=($!)
  wait "${CHILDREN[0]}"
}

# ---------------------------------------------------------------------------------------
# multihost

# The first host of a SLURM node list: scontrol when there is one, else the first entry
# of 'node[001-004,9],other' read by hand.
first_slurm_host() {
  local list="$1" host
  if command -v scontrol > /dev/null 2>&1 \
      && host="$(scontrol show hostnames "$list" 2>/dev/null | head -n 1)" && [[ -n "$host" ]]; then
    printf '%s' "$host"; return
  fi
  if [[ "$list" =~ ^([^,\[]+)\[([^],-]+) ]]; then
    printf '%s%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  else
    printf '%s' "${list%%,*}"
  fi
}

multihost() {
  if [[ $LOCAL_TEST == 0 && -n "${SLURM_JOB_ID:-}" ]]; then
    [[ -n "$NUM_PROCESSES" ]] || NUM_PROCESSES="${SLURM_NTASKS:-}"
    [[ -n "$PROCESS_ID" ]] || PROCESS_ID="${SLURM_PROCID:-}"
    if [[ -z "$COORDINATOR" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
      # The port jax.distributed's own SLURM detection picks: 61440 + job id mod 4096.
      COORDINATOR="$(first_slurm_host "$SLURM_JOB_NODELIST"):$((61440 + SLURM_JOB_ID % 4096))"
    fi
  fi
  [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] \
    || die "--num_processes must be a positive integer (got '${NUM_PROCESSES}'; SLURM_NTASKS is used under SLURM)"
  if [[ $LOCAL_TEST == 1 ]]; then
    [[ -z "$PROCESS_ID" ]] || die "--process_id and --local_test exclude each other (--local_test starts every process)"
    if [[ -z "$COORDINATOR" ]]; then
      local port
      port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
        || die "cannot find a free port with $PYTHON; pass --coordinator 127.0.0.1:PORT"
      COORDINATOR="127.0.0.1:$port"
    fi
  fi
  [[ "$COORDINATOR" =~ ^[^:[:space:]]+:[0-9]+$ ]] \
    || die "--coordinator must be HOST:PORT (got '${COORDINATOR}'; the first SLURM host is used under SLURM)"

  local command=("${BASE_COMMAND[@]}" "--workdir=$WORKDIR" "--coordinator_address=$COORDINATOR"
                 "--num_processes=$NUM_PROCESSES" ${EXTRA[@]+"${EXTRA[@]}"})
  if [[ $LOCAL_TEST == 0 ]]; then
    [[ "$PROCESS_ID" =~ ^[0-9]+$ && "$PROCESS_ID" -lt "$NUM_PROCESSES" ]] \
      || die "--process_id must be an integer in [0, $NUM_PROCESSES) (got '${PROCESS_ID}'; SLURM_PROCID is used under SLURM)"
    command+=("--process_id=$PROCESS_ID")
    validate_command "the run" "${command[@]}"
    local log="${WORKDIR%/}/log.process$PROCESS_ID.txt"
    if [[ $DRY_RUN == 1 ]]; then
      echo "$(quote_command "${command[@]}") 2>&1 | tee -a $(printf '%q' "$log")"
      return 0
    fi
    mkdir -p "$WORKDIR" || die "cannot create workdir '$WORKDIR'"
    "${command[@]}" > >(tee -a "$log") 2>&1 &
    CHILDREN=($!)
    wait "${CHILDREN[0]}"
    return
  fi

  # --local_test: every process here, on the CPU, each with its own log.
  local i p pid status=0 logs=()
  # CPU by default; a user may pick another platform with JAX_PLATFORMS.
  local platforms="${JAX_PLATFORMS:-cpu}"
  validate_command "the run" "${command[@]}" "--process_id=0"
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    logs+=("${WORKDIR%/}/log.process$i.txt")
    if [[ $DRY_RUN == 1 ]]; then
      echo "$(quote_command env "JAX_PLATFORMS=$platforms" "${command[@]}" "--process_id=$i") > $(printf '%q' "${logs[i]}") 2>&1"
    fi
  done
  [[ $DRY_RUN == 1 ]] && return 0
  mkdir -p "$WORKDIR" || die "cannot create workdir '$WORKDIR'"
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    JAX_PLATFORMS="$platforms" "${command[@]}" "--process_id=$i" > "${logs[i]}" 2>&1 &
    CHILDREN+=($!)
  done
  echo "[launch] $NUM_PROCESSES processes on $COORDINATOR, logs: ${logs[*]}" >&2
  # A process that fails leaves the others waiting on it in a collective: stop them.
  while ((${#CHILDREN[@]} > 0)); do
    pid=""
    wait -n -p pid "${CHILDREN[@]}"; i=$?
    [[ -n "$pid" ]] || continue
    local running=()
    for p in "${CHILDREN[@]}"; do [[ "$p" == "$pid" ]] || running+=("$p"); done
    CHILDREN=(${running[@]+"${running[@]}"})
    if ((i != 0 && status == 0)); then
      echo "[launch] process pid $pid failed (exit status $i); stopping the others" >&2
      status=$i
      forward_signal
    fi
  done
  return $status
}

case "$COMMAND" in
  sweep) sweep ;;
  local) local_run ;;
  multihost) multihost ;;
esac
