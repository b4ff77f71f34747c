#!/usr/bin/env bash
# Usage: ./run_eval_via_guided_diffusion.sh SAMPLES [REF_NPZ] [scripts/evaluate.py options ...]
# ADM evaluation (IS, FID, sFID, Precision, Recall) of a sample batch.
# SAMPLES: an ADM sample .npz (arr_0 uint8 [N, H, W, 3]) or, for our evaluator, a PNG folder.
# REF_NPZ: default outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz (from guided-diffusion's evaluations README).
# Default: our PyTorch evaluator, scripts/evaluate.py, with the Inception weights of INCEPTION_WEIGHTS.
# ADM_EVALUATOR=/path/to/guided-diffusion/evaluations/evaluator.py runs OpenAI's TensorFlow evaluator instead, with
# ADM_PYTHON (default: python), a Python that has TensorFlow; its stdout is also saved to <SAMPLES>_adm_tf.txt for
# tools/compare_eval.py. That script downloads classify_image_graph_def.pb into the working directory if absent.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the help; nothing is started
    sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "Usage: $0 SAMPLES [REF_NPZ] [scripts/evaluate.py options ...]" >&2
    exit 2
fi
samples=$1
shift
ref=outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz
if [[ $# -ge 1 && $1 != -* ]]; then
    ref=$1
    shift
fi
here=$(cd "$(dirname "$0")" && pwd)
if [[ ! -e $samples ]]; then
    echo "error: sample batch not found: $samples" >&2
    exit 1
fi
if [[ ! -f $ref ]]; then
    echo "error: reference batch not found: $ref (download it as guided-diffusion's evaluations/README.md says)" >&2
    exit 1
fi
if [[ -n ${ADM_EVALUATOR:-} ]]; then
    if [[ ! -f $ADM_EVALUATOR ]]; then
        echo "error: ADM_EVALUATOR=$ADM_EVALUATOR is not a file (want guided-diffusion/evaluations/evaluator.py)" >&2
        exit 1
    fi
    if [[ ! -f $samples ]]; then
        echo "error: OpenAI's evaluator needs an .npz; pack the folder first: python tools/pack_npz.py $samples" >&2
        exit 1
    fi
    if [[ $# -gt 0 ]]; then
        echo "error: OpenAI's evaluator takes no options (got: $*)" >&2
        exit 2
    fi
    "${ADM_PYTHON:-python}" "$ADM_EVALUATOR" "$ref" "$samples" | tee "${samples%.npz}_adm_tf.txt"
    exit 0
fi
python=${PYTHON:-python}
[[ -x $here/.venv/bin/python && -z "${PYTHON:-}" ]] && python=$here/.venv/bin/python
# scripts/evaluate.py reads INCEPTION_WEIGHTS itself; --inception-weights among the options overrides it.
exec "$python" "$here/scripts/evaluate.py" "$ref" "$samples" "$@"
