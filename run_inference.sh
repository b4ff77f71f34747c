#!/usr/bin/env bash
# A config's FID sample set, on one or many nodes: ./run_inference.sh CONFIG [options] [section.key=value ...]
# CONFIG comes first; scripts/sample.py's options (--ckpt, --output-dir, --seed, the release's flags, ...) and
# overrides follow in any order. CONFIG, --ckpt and --output-dir are relative to your folder; paths inside the config
# and in overrides are relative to the repository, as in the release. A failing run ends with the failing worker's
# own message and exit code.
# The release's environment interface: CFG_SCALE, CFG_INTERVAL_START, TIMESTEP_SHIFT, AUTOGUIDANCE_MODEL_SIZE,
# AUTOGUIDANCE_CKPT_ITER (thousands), CFG_SCALE_SEM, CFG_SCALE_TEX, FID_NUM, NUM_SAMPLING_STEPS (empty = config value);
# topology: GPUS_PER_NODE (default: GPUs seen, or 1), WORLD_SIZE or NNODES (nodes), RANK or NODE_RANK, MASTER_ADDR,
# MASTER_PORT; PRECISION (tf32 | fp32 | bf16; sampling in the release is fp32 with TF32 matmuls).
# Output: {train.output_dir}/{train.exp_name}/<name>/000000.png ... and <name>.npz (score it with
# ./run_eval_via_guided_diffusion.sh). Rerun the same command to finish an interrupted set.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the help; nothing is started
    sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "usage: $0 CONFIG [options] [section.key=value ...]" >&2
    exit 2
fi
source "$(dirname "$0")/scripts/launch_common.sh"
config=$(config_path "$1")
shift
absolute_sample_paths "$@"
cd "$repo"
set_torchrun
exec "${torchrun[@]}" scripts/sample.py --config "$config" --precision "${PRECISION:-tf32}" "${sampling_flags[@]}" \
    "${sample_arguments[@]}"
