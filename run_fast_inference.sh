#!/usr/bin/env bash
# A demo grid from one process: ./run_fast_inference.sh CONFIG [--labels 106 22 ...] [--seed S] [--out grid.png]
# Default labels are the release's (106, 22, 279, 975, 388, 15, 36, 979); guidance comes from the config and the
# same environment variables as run_inference.sh (CFG_SCALE, AUTOGUIDANCE_MODEL_SIZE, AUTOGUIDANCE_CKPT_ITER, ...).
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 CONFIG [--labels L ...] [--seed S] [--out PATH] [section.key=value ...]" >&2
    exit 2
fi
config=$1
shift
cd "$(dirname "$0")"
python=${PYTHON:-python}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && python=.venv/bin/python
flags=()
add() { [[ -n "${2:-}" ]] && flags+=("--$1" ${2}); return 0; }
add cfg_scale "${CFG_SCALE:-}"
add cfg_interval_start "${CFG_INTERVAL_START:-}"
add timestep_shift "${TIMESTEP_SHIFT:-}"
add autoguidance_model_size "${AUTOGUIDANCE_MODEL_SIZE:-}"
add autoguidance_ckpt_iter "${AUTOGUIDANCE_CKPT_ITER:-}"
add cfg_scale_sem "${CFG_SCALE_SEM:-}"
add cfg_scale_tex "${CFG_SCALE_TEX:-}"
add num_sampling_steps "${NUM_SAMPLING_STEPS:-}"
exec "$python" scripts/sample.py --config "$config" --demo --precision "${PRECISION:-tf32}" "${flags[@]}" "$@"
