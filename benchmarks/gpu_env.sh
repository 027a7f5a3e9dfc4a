# Sourced by the gpu_*.sh scripts: the environment a bare GPU machine needs.
# - the repository root on PYTHONPATH (ddn need not be installed there);
# - CV_TARBALL (optional): a .tar.xz of an unpacked opencv-contrib-python-headless wheel,
#   for a machine whose OpenCV lacks ximgproc (EdgeBoxes); unpacked onto PYTHONPATH.
#   The transfer to the machine is capped at 64 MiB, which the wheel itself exceeds
#   beside the weights; xz brings OpenCV 4.11's to 35 MB.
# - `unpack SRC.xz DEST`: python's lzma, no dependency on an xz binary.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
unpack() {
    $PY -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as g: shutil.copyfileobj(f, g)' "$1" "$2"
}
if [ -n "${CV_TARBALL:-}" ]; then
    mkdir -p /tmp/cv_site && unpack "$CV_TARBALL" /tmp/cv.tar && tar xf /tmp/cv.tar -C /tmp/cv_site
    export PYTHONPATH="/tmp/cv_site:$PYTHONPATH"
fi
nvidia-smi -L
$PY -c 'import torch, cv2; print("torch", torch.__version__, "cv2", cv2.__version__,
        "ximgproc", hasattr(cv2, "ximgproc"), torch.cuda.get_device_name())'
