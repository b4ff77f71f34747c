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

# torchrun with the release's topology variables, as the array `torchrun`: GPUS_PER_NODE (default: the GPUs seen, or
# 1 process on a CPU), WORLD_SIZE or NNODES (nodes, default 1), RANK or NODE_RANK (this node, default 0),
# MASTER_ADDR (127.0.0.1), MASTER_PORT (1235).
set_torchrun() {
    local gpus nproc nnodes node_rank
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
    nproc=${GPUS_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}
    nnodes=${NNODES:-${WORLD_SIZE:-1}}
    node_rank=${NODE_RANK:-${RANK:-0}}
    # torchrun sets WORLD_SIZE/RANK for the workers itself; the node-level values must not leak into them.
    unset WORLD_SIZE RANK
    if [[ $gpus -eq 0 ]]; then
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    fi
    # sfd.torchrun is torchrun ending a failed run with the worker's own message and exit code, not torchrun's dump.
    torchrun=("$python" -m sfd.torchrun --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$nproc"
              --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-1235}")
}
