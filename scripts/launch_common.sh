# Shared by the launchers (sourced, not run, from any folder): the repository, the Python to use, paths of the
# caller made absolute, the torchrun topology and the release's sampling variables as flags.
# shellcheck shell=bash

# The repository: the launchers run from it, so that the release's configs, which name repository paths such as
# configs/sfd/... and outputs/..., work wherever the launcher is called from.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The project's .venv unless PYTHON is set.
python=${PYTHON:-python}
[[ -x $repo/.venv/bin/python && -z "${PYTHON:-}" ]] && python=$repo/.venv/bin/python

# A path the caller named, made absolute (printed), so that it keeps naming the same file after `cd "$repo"`.
caller_path() {
    if [[ $1 == /* ]]; then printf '%s\n' "$1"; else printf '%s\n' "$PWD/$1"; fi
}

# The launchers' first argument, CONFIG, as an absolute path; an option in its place is a usage error (exit 2).
config_path() {
    if [[ $1 == -* ]]; then
        echo "error: the first argument is the CONFIG file, options come after it (got $1)" >&2
        return 2
    fi
    caller_path "$1"
}

# The arguments for scripts/sample.py with its path-valued flags (--ckpt, --out, --output-dir; as `--flag PATH` or
# `--flag=PATH`) made absolute, as the array `sample_arguments`. Everything else passes unchanged, including a
# section.key=value override where a path was expected (sfd/cli.py never takes an override as a flag's value).
absolute_sample_paths() {
    local argument flag=""
    local override='^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+='  # sfd/cli.py's OVERRIDE
    sample_arguments=()
    for argument in "$@"; do
        if [[ -n $flag && $argument != -* && ! $argument =~ $override ]]; then
            argument=$(caller_path "$argument")
        elif [[ $argument == --ckpt=* || $argument == --out=* || $argument == --output-dir=* ]]; then
            argument="${argument%%=*}=$(caller_path "${argument#*=}")"
        fi
        flag=""
        [[ $argument == --ckpt || $argument == --out || $argument == --output-dir ]] && flag=$argument
        sample_arguments+=("$argument")
    done
    return 0
}

# The release's environment interface as scripts/sample.py flags; empty variables add nothing. Values are left
# unquoted, as the release does, so "1.5 2.0" gives two values (the first is used).
sampling_flags=()
add_flag() { [[ -n "${2:-}" ]] && sampling_flags+=("--$1" ${2}); return 0; }
add_flag cfg_scale "${CFG_SCALE:-}"
add_flag cfg_interval_start "${CFG_INTERVAL_START:-}"
add_flag timestep_shift "${TIMESTEP_SHIFT:-}"
add_flag autoguidance_model_size "${AUTOGUIDANCE_MODEL_SIZE:-}"
add_flag autoguidance_ckpt_iter "${AUTOGUIDANCE_CKPT_ITER:-}"
add_flag cfg_scale_sem "${CFG_SCALE_SEM:-}"
add_flag cfg_scale_tex "${CFG_SCALE_TEX:-}"
add_flag fid_num "${FID_NUM:-}"
add_flag num_sampling_steps "${NUM_SAMPLING_STEPS:-}"

# torchrun for one node or many, as the array `torchrun`. GPUS_PER_NODE: processes per node (default: the
# accelerators seen, of any type, or 1 on a CPU). NNODES or WORLD_SIZE: nodes (default 1). On one node torchrun runs
# --standalone, on a free port, so two jobs on one host never collide (MASTER_PORT pins a port, on 127.0.0.1 unless
# MASTER_ADDR is set). On several nodes every node joins a c10d rendezvous at MASTER_ADDR (required):MASTER_PORT
# (29500) named RDZV_ID (default SLURM_JOB_ID, else "sfd"); the rendezvous numbers the nodes, and NODE_RANK (or RANK),
# when given, only says which node hosts it (node 0; otherwise torch matches MASTER_ADDR to this host). MAX_RESTARTS:
# how often a failed worker group is restarted (resuming from the newest checkpoint): default 0 on one node, where a
# failure is a bug or bad input that a rerun repeats, and 3 on several, where a lost node or link is the usual cause.
# Exit codes 2 (bad input) and 3 (a run that cannot continue) are never retried (sfd/torchrun.py).
set_torchrun() {
    local nnodes=${NNODES:-${WORLD_SIZE:-1}} node_rank=${NODE_RANK:-${RANK:-}} accelerators device_type nproc
    # Checked before anything starts: a node would otherwise wait out the rendezvous timeout (minutes).
    if [[ ! $nnodes =~ ^[1-9][0-9]*$ ]]; then
        echo "error: NNODES (or WORLD_SIZE) must be a number of nodes, got '$nnodes'" >&2
        return 2
    fi
    if (( nnodes > 1 )) && [[ -z ${MASTER_ADDR:-} ]]; then
        echo "error: NNODES=$nnodes needs MASTER_ADDR, the address of the node hosting the rendezvous (node 0)" >&2
        return 2
    fi
    # One process per accelerator of the type the device layer picks (sfd/device.py: SFD_DEVICE, else CUDA, Ascend
    # NPU, XPU or MPS, else the CPU), so SFD_DEVICE=cpu on a GPU node starts one CPU process, not one per GPU.
    read -r device_type accelerators < <(cd "$repo" && "$python" -c 'from sfd.device import resolve
accelerator = resolve()
print(accelerator.type, 0 if accelerator.is_cpu else accelerator.count())')
    nproc=${GPUS_PER_NODE:-$(( accelerators > 0 ? accelerators : 1 ))}
    if [[ $device_type == cpu ]]; then
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    fi
    # torchrun sets WORLD_SIZE/RANK for the workers itself; the node-level values must not leak into them.
    unset WORLD_SIZE RANK
    # sfd.torchrun is torchrun ending a failed run with the worker's own message and exit code, not torchrun's dump.
    torchrun=("$python" -m sfd.torchrun --nproc-per-node "$nproc")
    if (( nnodes == 1 )) && [[ -z ${MASTER_PORT:-} ]]; then
        torchrun+=(--standalone --max-restarts "${MAX_RESTARTS:-0}")
        return 0
    fi
    torchrun+=(--nnodes "$nnodes" --rdzv-backend c10d --rdzv-endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}"
               --rdzv-id "${RDZV_ID:-${SLURM_JOB_ID:-sfd}}")
    if [[ -n $node_rank ]]; then
        torchrun+=(--rdzv-conf "is_host=$([[ $node_rank == 0 ]] && echo true || echo false)")
    fi
    torchrun+=(--max-restarts "${MAX_RESTARTS:-$(( nnodes > 1 ? 3 : 0 ))}")
}

# The launchers' --dry-run, taken out of their arguments: sets `dry_run` (0 or 1) and the array `launch_arguments`.
take_dry_run() {
    local argument
    dry_run=0
    launch_arguments=()
    for argument in "$@"; do
        if [[ $argument == --dry-run ]]; then dry_run=1; else launch_arguments+=("$argument"); fi
    done
    return 0
}

# A command as one line a shell can run again from the repository (what --dry-run shows): "# torchrun: ...".
show_command() {
    local line
    printf -v line ' %q' "$@"
    echo "# torchrun:$line"
}
