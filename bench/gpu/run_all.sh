#!/usr/bin/env bash
# Run the four GPU benches of docs/gpu.md with --json into the directory $1, then print their tables (summary.md).
# A failing step does not stop the others; the exit status is the number of failed steps. Extra arguments go to
# every script, e.g. --small for a CPU dry run in about a minute.
#
#   bash bench/gpu/run_all.sh OUT_DIR [--small]
set -u
out=${1:?usage: bash bench/gpu/run_all.sh OUT_DIR [extra args for every script, e.g. --small]}
shift
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$(cd "$here/../.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/run_all.log"
: >"$log"
failed=0

step() {  # step NAME ARGS...: bench/gpu/NAME.py --json ARGS > OUT/NAME.json, stderr appended to the log
    local name=$1 start=$SECONDS rc=0
    shift
    echo "== $name $*" | tee -a "$log"
    "$py" "$here/$name.py" --json "$@" >"$out/$name.json.partial" 2>>"$log" || rc=$?
    if [ "$rc" -eq 0 ]; then
        mv "$out/$name.json.partial" "$out/$name.json"
        echo "   ok in $((SECONDS - start)) s"
    else
        rm -f "$out/$name.json.partial"
        echo "   FAILED (exit $rc) after $((SECONDS - start)) s; the end of $log:"
        tail -n 5 "$log" | sed 's/^/   | /'
        failed=$((failed + 1))
    fi
}

"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$log"
step expert_ffn "$@"
step bs_step "$@"
step split_vs_unsplit "$@"
step calibrate --timings "$out/expert_ffn.json" "$@"
"$py" "$here/summary.py" "$out" | tee "$out/summary.md"
echo "failed steps: $failed"
exit "$failed"
