# Shared by the launchers (sourced, not run): the Python to use, the torchrun topology and the release's sampling
# variables as flags.
# shellcheck shell=bash

# The project's .venv unless PYTHON is set.
python=${PYTHON:-python}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && python=.venv/bin/python

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
    torchrun=("$python" -m torch.distributed.run --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$nproc"
              --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-1235}")
}
