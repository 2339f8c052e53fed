#!/usr/bin/env bash
# Install the reference tool (PyPI totalspineseg==20260807) into its own virtual environment,
# for side-by-side comparisons only. SpineSeg never imports it.
#
# Usage: benchmarks/reference_env.sh VENV_DIR
#
# Idempotent: an existing venv is reused and a venv whose stamp file matches the pinned set is
# left alone. Pins follow docs/method.md §7: torch==2.13.0 (CPU wheel from the
# local wheel folder), kornia==0.8.2 (auglab breaks with 0.8.3/0.9.0), nnunetv2==2.8.1.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
venv="$1"
python="${PYTHON:-python3}"
pins="torch==2.13.0 kornia==0.8.2 totalspineseg==20260807 nnunetv2==2.8.1"
stamp="$venv/.reference_env_ok"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
    echo "reference env already installed: $venv"
    exit 0
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
constraints="$venv/reference-constraints.txt"
printf 'torch==2.13.0\nkornia==0.8.2\n' >"$constraints"

pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" torch==2.13.0
# --no-deps: its metadata would let pip pick another torch; run-time needs are listed below.
"${pip[@]}" -c "$constraints" --no-deps totalspineseg==20260807
"${pip[@]}" -c "$constraints" nnunetv2==2.8.1 torchio gryds auglab psutil SimpleITK nilearn \
    tqdm nibabel scipy numpy pillow kornia==0.8.2

# Smoke test: the console scripts exist and the package imports (auglab + kornia pin).
"$venv/bin/python" -c "import totalspineseg.inference, nnunetv2, torch; print('torch', torch.__version__)"
for script in totalspineseg totalspineseg_iterative_label totalspineseg_extract_levels \
    totalspineseg_fill_canal; do
    [[ -x "$venv/bin/$script" ]] || { echo "missing console script $script" >&2; exit 1; }
done
echo "$pins" >"$stamp"
echo "reference env ready: $venv"
