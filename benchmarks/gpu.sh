#!/usr/bin/env bash
# Every GPU benchmark in one call, on any CUDA machine with jax, torch, einops and timm: installs
# the wheels in .whl (for a machine without a package index), then benchmarks/peer.sh with the
# speed variants under study, each profiled. Everything lands in $OUT (default /tmp/out):
#   swiglu_norm.txt the fused SwiGLU-LayerNorm kernels under each tiling, against XLA (bench swiglu_norm)
#   results.jsonl   maepp and the peer, one JSON line per program, variant and batch
#   profiles.md     where each maepp variant's step time goes (maepp.tools.bench.profile)
#   env.txt         GPU, driver and package versions
#   traces.tar.gz   raw traces and HLO of the default (run0) and the first variant (run2)
# Carried: .whl (ml_collections, librosa and its pure-Python needs, rotary-embedding-torch) and
# .peer (the release's src/; benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PEER_SRC=$PWD/.peer
# Not installed, so maepp.configs (setup.py's name for configs/) is made here, as the install would.
[[ -e maepp/configs ]] || ln -s ../configs maepp/configs
{ nvidia-smi; python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|torch|nvidia-cudnn|triton) '; } >"$OUT/env.txt" 2>&1
# The fused SwiGLU-LayerNorm kernels' tilings against XLA, kernels alone: 12 tilings per shape
# around the default (8,192 values, 3 stages: run 4's fastest; larger tiles and 16 warps not yet
# tried), capped so that the whole script stays within one 10-minute call (run 4 took 592 s).
timeout 180 python3 -m maepp.tools.bench swiglu_norm --tile_elements 4096,8192,16384 --programs 528,2112 \
  --num_warps 8,16 --num_stages 3 --iterations 10 2>&1 | tee "$OUT/swiglu_norm.txt" | grep -v '^{'
MAEPP_ARGS=${MAEPP_ARGS:-"--profile_dir /tmp/profiles --variant model.swiglu_norm=pallas --variant model.swiglu_norm=pallas,batch_size=128"} \
  benchmarks/peer.sh "$OUT/results.jsonl" 2> >(tee "$OUT/log.txt" >&2)
# The default's and the first variant's raw traces and HLO, in one file (one file is easier to
# carry off a machine than many), for reading again offline (maepp.tools.bench.profile.summarise).
traces=$(find /tmp/profiles/run0 /tmp/profiles/run2 \( -name '*.xplane.pb' -o -name module.hlo.txt \) 2>/dev/null)
[[ -n $traces ]] && tar -czf "$OUT/traces.tar.gz" $traces
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
