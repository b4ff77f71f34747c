#!/usr/bin/env bash
# Usage: ./run_fast_inference.sh CONFIG [--labels 106 22 ...] [--seed S] [--out grid.png] [section.key=value ...]
# A demo grid from one process. Default labels are the release's (106, 22, 279, 975, 388, 15, 36, 979); guidance
# comes from the config and the same environment variables as run_inference.sh (CFG_SCALE, AUTOGUIDANCE_MODEL_SIZE,
# AUTOGUIDANCE_CKPT_ITER, ...).
# CONFIG comes first; options (also --ckpt and scripts/sample.py's others) and section.key=value overrides follow in
# any order. CONFIG, --ckpt and --out are relative to your folder (the default --out, demo_images/demo_samples.png,
# to the repository); paths inside the config and in overrides are relative to the repository, as in the release.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the help; nothing is started
    sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "Usage: $0 CONFIG [--labels L ...] [--seed S] [--out PATH] [section.key=value ...]" >&2
    exit 2
fi
source "$(dirname "$0")/scripts/launch_common.sh"
config=$(config_path "$1")
shift
absolute_sample_paths "$@"
cd "$repo"
exec "$python" scripts/sample.py --config "$config" --demo --precision "${PRECISION:-tf32}" "${sampling_flags[@]}" \
    "${sample_arguments[@]}"
