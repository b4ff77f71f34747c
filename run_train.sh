#!/usr/bin/env bash
# Usage: ./run_train.sh CONFIG [section.key=value ...] [--dry-run] [--no-progress]
# Train SFD on one or many nodes. CONFIG comes first and is relative to your folder; options and overrides follow in
# any order (the later of two overrides of one key wins). Paths inside the config and in overrides are relative to
# the repository, as in the release. The config is checked before torchrun starts; a failing run ends with the
# failing worker's own message and exit code. --dry-run starts nothing: it prints the torchrun command it would run,
# as a first line "# torchrun: ..." (run from the repository), then the resolved config.
# Topology: GPUS_PER_NODE (default: the accelerators seen, or 1 on a CPU); NNODES or WORLD_SIZE (nodes, default 1:
# torchrun --standalone on a free port, or on MASTER_PORT if set); on several nodes MASTER_ADDR (required: the
# rendezvous host, node 0), MASTER_PORT (29500), RDZV_ID (default SLURM_JOB_ID, else sfd) and NODE_RANK or RANK
# (optional: 0 marks the rendezvous host). MAX_RESTARTS: restarts of a failed worker group, each resuming from the
# newest checkpoint (default 0 on one node, 3 on several); exit codes 2 (bad input) and 3 (e.g. a non-finite loss)
# are never retried. PRECISION (bf16 | fp16 | fp32 | no, default bf16; CPUs always train in fp32).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the help; nothing is started
    sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "Usage: $0 CONFIG [section.key=value ...] [--dry-run]" >&2
    exit 2
fi
source "$(dirname "$0")/scripts/launch_common.sh"
config=$(config_path "$1")
shift
cd "$repo"
take_dry_run "$@"
train=(scripts/train.py --config "$config" "train.precision=${PRECISION:-bf16}" "${launch_arguments[@]}")
set_torchrun
if (( dry_run )); then  # scripts/train.py's --dry-run prints the resolved config
    show_command "${torchrun[@]}" "${train[@]}"
    exec "$python" "${train[@]}" --dry-run
fi
# A bad config fails here, once, with its one-line error (exit 2): not once per worker, node and restart.
"$python" "${train[@]}" --dry-run >/dev/null
exec "${torchrun[@]}" "${train[@]}"
