#!/usr/bin/env bash
# Snakemake 7 cluster-status for SLURM: prints running, success or failed for the job id in $1.
set -u
id="$1"
state=$(sacct -j "$id" --format=State --noheader --parsable2 2>/dev/null | head -n 1 | cut -d' ' -f1)
if [ -z "$state" ]; then
  state=$(scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2)
fi
case "$state" in
  COMPLETED) echo success ;;
  "" | PENDING | RUNNING | CONFIGURING | COMPLETING | REQUEUED | REQUEUE_HOLD | REQUEUE_FED | RESIZING | \
    SUSPENDED | SIGNALING | STAGE_OUT | STOPPED) echo running ;;
  *) echo failed ;; # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE
esac
