# Shared by scripts/slurm/*.sbatch (sourced): one of the repository's launchers run once on every node of the job,
# with the topology taken from the allocation, and the job requeued when SLURM warns that its time is nearly up.
# shellcheck shell=bash

# USR1's trap: SLURM's early warning (--signal=B:USR1@120 sends it to the batch shell 2 minutes before the time
# limit). The requeued job reruns the same command: training resumes from the newest checkpoint, sampling makes only
# the missing images. Preemption with PreemptMode=REQUEUE requeues by itself thanks to --requeue. TERM is not
# trapped: scancel sends it too, and a cancelled job must stay cancelled.
requeue_job() {
    echo "sfd: job $SLURM_JOB_ID is near its time limit, requeueing it" >&2
    scontrol requeue "$SLURM_JOB_ID"
}

# run_on_every_node LAUNCHER [ARGUMENT ...]: runs `LAUNCHER ARGUMENT ...` as one task per node; its exit status.
run_on_every_node() {
    local step status=0
    # Set here, not taken from the submitting shell, whose environment sbatch passes on (a MASTER_ADDR left there
    # would otherwise win).
    export NNODES=$SLURM_NNODES
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)  # sed reads all: no SIGPIPE
    export MASTER_ADDR
    # A port of this job's own, so that two jobs whose first node is shared do not collide (one node needs none:
    # the launchers run torchrun --standalone on a free port there).
    unset MASTER_PORT
    if (( NNODES > 1 )); then
        export MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
    fi
    # The GPUs allocated per node; when SLURM does not say, the launcher counts those it sees (the allocation's).
    export GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-}
    trap requeue_job USR1
    # NODE_RANK is each task's SLURM_NODEID: node 0, the first host (MASTER_ADDR), hosts the rendezvous.
    srun --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        bash -c 'NODE_RANK=$SLURM_NODEID exec "$@"' bash "$@" &
    step=$!
    # srun runs in the background because bash runs a trap only once the foreground command has ended; a trapped
    # signal ends `wait` early, so wait again until the step itself has ended.
    wait "$step" || status=$?
    while kill -0 "$step" 2>/dev/null; do
        status=0
        wait "$step" || status=$?
    done
    return "$status"
}
