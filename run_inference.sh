#!/usr/bin/env bash
# Usage: ./run_inference.sh CONFIG [options] [section.key=value ...]
# A config's FID sample set, on one or many nodes. CONFIG comes first; scripts/sample.py's options (--ckpt,
# --output-dir, --seed, the release's flags, ...) and overrides follow in any order. CONFIG, --ckpt and --output-dir
# are relative to your folder; paths inside the config and in overrides are relative to the repository, as in the
# release. A failing run ends with the failing worker's own message and exit code. --dry-run prints the torchrun
# command it would run (from the repository) and starts nothing.
# The release's environment interface: CFG_SCALE, CFG_INTERVAL_START, TIMESTEP_SHIFT, AUTOGUIDANCE_MODEL_SIZE,
# AUTOGUIDANCE_CKPT_ITER (thousands), CFG_SCALE_SEM, CFG_SCALE_TEX, FID_NUM, NUM_SAMPLING_STEPS (empty = config value);
# topology as in run_train.sh: GPUS_PER_NODE (default: the accelerators seen, or 1), NNODES or WORLD_SIZE (nodes,
# default 1: torchrun --standalone), MASTER_ADDR (required on several nodes), MASTER_PORT, RDZV_ID, NODE_RANK or RANK,
# MAX_RESTARTS (default 0 on one node, 3 on several; a restart regenerates only missing images); PRECISION
# (tf32 | fp32 | no | bf16 | fp16, default tf32: the release's sampling, fp32 with TF32 matmuls; no/fp32 is exact
# fp32; bf16/fp16 autocast, faster but not the release's numbers; CPUs always sample in fp32).
# Output: {train.output_dir}/{train.exp_name}/<name>/000000.png ... and <name>.npz (score it with
# ./run_eval_via_guided_diffusion.sh). Rerun the same command to finish an interrupted set.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the help; nothing is started
    sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "Usage: $0 CONFIG [options] [section.key=value ...]" >&2
    exit 2
fi
source "$(dirname "$0")/scripts/launch_common.sh"
config=$(config_path "$1")
shift
take_dry_run "$@"
absolute_sample_paths "${launch_arguments[@]}"
cd "$repo"
sample=(scripts/sample.py --config "$config" --precision "${PRECISION:-tf32}" "${sampling_flags[@]}"
        "${sample_arguments[@]}")
set_torchrun
if (( dry_run )); then
    show_command "${torchrun[@]}" "${sample[@]}"
    exit 0
fi
exec "${torchrun[@]}" "${sample[@]}"
