#!/usr/bin/env bash
# Train SFD on one or many nodes: ./run_train.sh CONFIG [section.key=value ...] [--dry-run] [--no-progress]
# CONFIG comes first and is relative to your folder; options and overrides follow in any order (the later of two
# overrides of one key wins). Paths inside the config and in overrides are relative to the repository, as in the
# release. A failing run ends with the failing worker's own message and exit code.
# Topology (the release's variables): GPUS_PER_NODE (default: GPUs seen, or 1 on CPU), WORLD_SIZE or NNODES
# (number of nodes, default 1), RANK or NODE_RANK (this node, default 0), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (1235), PRECISION (bf16 | fp16 | fp32, default bf16; CPUs always train in fp32).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the help; nothing is started
    sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "usage: $0 CONFIG [section.key=value ...] [--dry-run]" >&2
    exit 2
fi
source "$(dirname "$0")/scripts/launch_common.sh"
config=$(config_path "$1")
shift
cd "$repo"
for argument in "$@"; do
    if [[ $argument == --dry-run ]]; then
        exec "$python" scripts/train.py --config "$config" "train.precision=${PRECISION:-bf16}" "$@"
    fi
done
set_torchrun
exec "${torchrun[@]}" scripts/train.py --config "$config" "train.precision=${PRECISION:-bf16}" "$@"
