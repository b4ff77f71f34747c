# Shared by the launchers (sourced, not run): the Python to use and the release's sampling variables as flags.
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
