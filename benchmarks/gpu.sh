#!/usr/bin/env bash
# The one script a lent GPU machine runs (the `device` tool of this workplace; any CUDA machine
# with jax, torch, einops and timm will do): installs the carried wheels, then benchmarks/peer.sh
# with the speed variants under study, each profiled. Everything lands in $OUT:
#   results.jsonl   maepp and the peer, one JSON line per program, variant and batch
#   profiles.md     where each maepp variant's step time goes (maepp.tools.bench.profile)
#   env.txt         GPU, driver and package versions
# Carried: .whl (ml_collections, librosa and its pure-Python needs, rotary-embedding-torch) and
# .peer (the release's src/ and peer_bench.py).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PEER_SRC=$PWD/.peer
{ nvidia-smi; python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|torch|nvidia-cudnn|triton) '; } >"$OUT/env.txt" 2>&1
MAEPP_ARGS=${MAEPP_ARGS:-"--profile_dir /tmp/profiles --variant xla_gpu_enable_cudnn_layer_norm=true --variant model.scan_layers=true --variant model.scan_layers=true,model.remat=nothing_saveable"} \
  benchmarks/peer.sh "$OUT/results.jsonl" 2> >(tee "$OUT/log.txt" >&2)
# The first run's raw trace and HLO, for reading again offline (maepp.tools.bench.profile.summarise).
trace=$(find /tmp/profiles/run0 -name '*.xplane.pb' | head -n 1)
[[ -n $trace ]] && gzip -c "$trace" >"$OUT/run0.xplane.pb.gz" && gzip -c /tmp/profiles/run0/module.hlo.txt >"$OUT/run0.hlo.txt.gz"
python3 - "$OUT/results.jsonl" >"$OUT/profiles.md" <<'PY'
import json, sys
from maepp.tools.bench import profile
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("profile"):
        print(f"## {r['variant'] or 'config'}, batch {r['global_batch']}: {r['step_ms']} ms, {r['clips_per_s']} clips/s\n")
        print(profile.markdown(r["profile"]) + "\n")
PY
tail -n 20 "$OUT/profiles.md"
