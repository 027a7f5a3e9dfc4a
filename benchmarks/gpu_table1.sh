#!/usr/bin/env bash
# The paper's Table 1 at full size (VGG-16, ImageNet conv weights, 320 px) on one lent GPU,
# in one call sized for a 15-minute loan. Results: benchmarks/RESULTS.md.
#   bash benchmarks/gpu_table1.sh LOG_DIR WEIGHTS [table1.py options...]
# WEIGHTS is a VGG-16 state dict (.pth, or .pth.xz: the transfer to the GPU machine is
# capped at 64 MiB, so the weights travel float16 and xz-compressed). CV_TARBALL: see
# gpu_env.sh.
# The run directory is /tmp/ddn_table1 (models are large); LOG_DIR gets the log, the
# table, its JSON and every run's config and metrics (runs.txt).
set -u
LOG=${1:?usage: gpu_table1.sh LOG_DIR WEIGHTS [table1 options]}
WEIGHTS=${2:?usage: gpu_table1.sh LOG_DIR WEIGHTS [table1 options]}
shift 2
RUN=${RUN_DIR:-/tmp/ddn_table1}
mkdir -p "$LOG" "$RUN"
source "$(dirname "$0")/gpu_env.sh"
case "$WEIGHTS" in
    *.xz) unpack "$WEIGHTS" "$RUN/weights.pth" && WEIGHTS="$RUN/weights.pth" ;;
esac
t0=$SECONDS
timeout "${TABLE1_LIMIT:-500}" $PY benchmarks/table1.py --out "$RUN" --device cuda \
    --weights "$WEIGHTS" "$@" >"$LOG/table1.log" 2>&1
rc=$?
echo "=== table1: exit $rc in $((SECONDS - t0)) s"
grep -a "^table1:\|Error\|error:" "$LOG/table1.log" | tail -n 20
cp "$RUN"/table1.md "$RUN"/table1.json "$LOG"/ 2>/dev/null && cat "$LOG/table1.md"
# One file for every run's config and metrics: the transfer back caps the number of files.
for f in "$RUN"/cls-*/*.json "$RUN"/cls-*/*.csv "$RUN"/seg-*/*.json "$RUN"/seg-*/*.csv \
         "$RUN"/deconvnet-*/*.json "$RUN"/deconvnet-*/*.csv; do
    [ -f "$f" ] && printf '\n==> %s <==\n' "${f#"$RUN"/}" && cat "$f"
done >"$LOG/runs.txt"
exit $rc
