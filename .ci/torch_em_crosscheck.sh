#!/usr/bin/env bash
# Cross-check `probda import` against torch-em's real ProbabilisticUNet.
#
# 1. A separate venv (reused if complete) with torch==2.13.0 (the CPU wheel on
#    disk), numpy and torch-em==0.10.9 installed --no-deps: torch-em's model code
#    needs only torch and numpy; its trainer deps (torchvision, kornia, ...) are
#    not installed, and torchvision from PyPI does not import beside this torch.
# 2. That venv builds torch-em ProbabilisticUNets (fixed seeds; no norm,
#    InstanceNorm with a teacher, GroupNorm, InstanceNormTrackStats, BatchNorm;
#    depths 2 to 5), saves them as torch-em's trainer does, and records outputs
#    for fixed inputs and z.
# 3. probda (PROBDA_PYTHON, default .venv/bin/python) runs `probda import` on each
#    and compares outputs to 5e-5 of their scale.
# 4. The user's deployment path for each single-channel case (teacher and
#    student weights): `probda export --format onnx`, `probda segment` in a
#    process where `import torch` fails, compared with torch-em's own forward()
#    + sample() for the same z to 1e-4; then `probda export --format bioimageio`,
#    which runs bioimageio.core's test on the package. A 2-channel case checks
#    that export refuses it with one clear line.
# Exit status is non-zero on any mismatch or failed step.
#
# PROBDA_TORCH_EM_FULL=1 instead installs torch-em with all its dependencies and
# torch 2.14.1 + torchvision 0.29.1 from disk (6.4 GB, ~6 min) and imports torch_em
# the normal way; the light default takes ~1-2 min and runs the same model code.
#
# Env: PROBDA_PYTHON, PROBDA_TORCH_EM_VENV (venv dir), PROBDA_CROSSCHECK_OUT (work dir),
#      PROBDA_TORCH_EM_FULL.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PROBDA_PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py="python3"; fi
fi
full="${PROBDA_TORCH_EM_FULL:-0}"
if [ "$full" = 1 ]; then flavour="full-torch-2.14.1"; else flavour="torch-2.13.0"; fi
venv="${PROBDA_TORCH_EM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/probda-ci/torch-em-0.10.9-$flavour}"
if [ -n "${PROBDA_CROSSCHECK_OUT:-}" ]; then
    out="$PROBDA_CROSSCHECK_OUT"
else
    out="$(mktemp -d -t probda-torch-em-XXXXXX)"
    trap 'rm -rf "$out"' EXIT
fi
stamp="$venv/.probda-crosscheck-ready"
start=$SECONDS

if [ ! -f "$stamp" ]; then
    echo "torch-em cross-check: creating venv $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    pip=("$venv/bin/pip" install -q --disable-pip-version-check)
    if [ "$full" = 1 ]; then
        "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" "torch-em==0.10.9" "pydantic<2.14" 2>&1 | grep -v "^WARNING: Location" || true
    else
        "${pip[@]}" "torch==2.13.0" numpy 2>&1 | grep -v "^WARNING: Location" || true
        "${pip[@]}" --no-deps "torch-em==0.10.9" 2>&1 | grep -v "^WARNING: Location" || true
    fi
    "$venv/bin/python" -c "import torch, numpy, importlib.util as u; assert u.find_spec('torch_em')"
    touch "$stamp"
else
    echo "torch-em cross-check: reusing venv $venv"
fi
echo "torch-em cross-check: environment ready after $((SECONDS - start)) s"

"$venv/bin/python" "$here/torch_em_crosscheck.py" make "$out"

for f in "$out"/*.torch_em.pt; do
    name="$(basename "$f" .torch_em.pt)"
    "$py" -m probda_deploy.cli.app import "$f" -o "$out/$name.probda.pt" -q
    if [ -f "$out/$name.expected.pt" ] && "$py" -c "import sys, torch; sys.exit(0 if 'teacher' in torch.load(sys.argv[1], weights_only=True) else 1)" "$out/$name.expected.pt"; then
        "$py" -m probda_deploy.cli.app import "$f" -o "$out/$name.student.probda.pt" --use-student >/dev/null
    fi
done

"$py" "$here/torch_em_crosscheck.py" compare "$out"

# ---- deployment: export -> segment without torch -> equal to torch-em -> bioimage.io
"$py" "$here/torch_em_crosscheck.py" deploy "$out"
mkdir -p "$out/no-torch"
cat > "$out/no-torch/sitecustomize.py" <<'PY'
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked for the cross-check")
        return None

sys.meta_path.insert(0, _NoTorch())
PY
if PYTHONPATH="$out/no-torch" "$py" -c "import torch" 2>/dev/null; then
    echo "torch-em cross-check: FAIL: could not block torch for probda segment"; exit 1
fi
cli=("$py" -m probda_deploy.cli.app)
"$py" "$here/torch_em_crosscheck.py" plan "$out" | while read -r name which ckpt; do
    t0=$SECONDS
    "${cli[@]}" export "$out/$ckpt" --format onnx -o "$out/$name-$which.probda" -q >/dev/null
    PYTHONPATH="$out/no-torch" "${cli[@]}" segment "$out/$name-$which.probda" -i "$out/$name.tif" \
        -o "$out/seg-$name-$which" --normalize none -k 8 --seed 0 -q > "$out/seg-$name-$which.log"
    grep -q "1 segmented" "$out/seg-$name-$which.log"
    "${cli[@]}" export "$out/$ckpt" --format bioimageio -o "$out/$name-$which.zip" -q >/dev/null
    echo "  $name $which: exported (onnx, bioimage.io package passed bioimageio.core's test), segmented without torch in $((SECONDS - t0)) s"
done
if "${cli[@]}" export "$out/groupnorm2ch.probda.pt" --format onnx -o "$out/groupnorm2ch.probda" -q 2> "$out/2ch.err"; then
    echo "torch-em cross-check: FAIL: a 2-channel model was exported"; exit 1
fi
grep -q "single-channel images" "$out/2ch.err" && [ "$(wc -l < "$out/2ch.err")" -le 2 ]
echo "  groupnorm2ch: export refused with one line: $(head -c 160 "$out/2ch.err")"
"$venv/bin/python" "$here/torch_em_crosscheck.py" reference "$out"
"$py" "$here/torch_em_crosscheck.py" check "$out"
echo "torch-em cross-check: done in $((SECONDS - start)) s"
