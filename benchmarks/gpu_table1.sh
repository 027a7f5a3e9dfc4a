#!/usr/bin/env bash
# The paper's Table 1 at full size (VGG-16, ImageNet conv weights, 320 px) on one lent GPU,
# in one call sized for a 15-minute loan. Results: benchmarks/RESULTS.md.
#   bash benchmarks/gpu_table1.sh LOG_DIR WEIGHTS [table1.py options...]
# WEIGHTS is a VGG-16 state dict (.pth, or .pth.xz: the transfer to the GPU machine is
# capped at 64 MiB, so the weights travel float16 and xz-compressed). Where the machine's
# OpenCV lacks ximgproc (EdgeBoxes), CV_TARBALL names a .tar.xz of an unpacked
# opencv-contrib-python-headless wheel; it is unpacked onto PYTHONPATH.
# The run directory is /tmp/ddn_table1 (models are large); LOG_DIR gets the log, the
# table, its JSON and every run's config and metrics (runs.txt).
set -u
LOG=${1:?usage: gpu_table1.sh LOG_DIR WEIGHTS [table1 options]}
WEIGHTS=${2:?usage: gpu_table1.sh LOG_DIR WEIGHTS [table1 options]}
shift 2
RUN=${RUN_DIR:-/tmp/ddn_table1}
PY=${PYTHON:-python3}
mkdir -p "$LOG" "$RUN"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unpack() {  # unpack SRC.xz DEST  (python's lzma: no dependency on an xz binary)
    $PY -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as g: shutil.copyfileobj(f, g)' "$1" "$2"
}
if [ -n "${CV_TARBALL:-}" ]; then
    mkdir -p /tmp/cv_site && unpack "$CV_TARBALL" /tmp/cv.tar && tar xf /tmp/cv.tar -C /tmp/cv_site
    export PYTHONPATH="/tmp/cv_site:$PYTHONPATH"
fi
case "$WEIGHTS" in
    *.xz) unpack "$WEIGHTS" "$RUN/weights.pth" && WEIGHTS="$RUN/weights.pth" ;;
esac
nvidia-smi -L
$PY -c 'import torch, cv2; print("torch", torch.__version__, "cv2", cv2.__version__,
        "ximgproc", hasattr(cv2, "ximgproc"), torch.cuda.get_device_name())'
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
