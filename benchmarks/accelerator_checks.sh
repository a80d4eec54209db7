#!/bin/bash
# The device checks for a lent GPU machine, in one call (its image has jax, flax, optax,
# numpy, safetensors and torch, but no TensorFlow, SeqIO, gin-config, soundfile or soxr, and
# no network). Run from the repository root with what benchmarks/prepare_accelerator.sh put
# in .whl (wheels) and .gpu (audio); results go to $OUT (default /tmp/accelerator_out):
#   1. w2v-BERT `small` learning on the wesnoth training tracks (issue #4), several gin
#      variants at once on the one GPU for W2V_SECONDS each (benchmarks/w2v_bert_learning.py):
#      $OUT/w2v_variants.json (every learning curve) and, in $OUT/w2v, the export of the
#      variant whose codebook stayed most used (highest code perplexity over its last three
#      logged steps; a collapsed codebook has perplexity ~1 and trivial tasks)
#   2. SoundStream `paper` encode + decode speed (issue #3): $OUT/codec_speed_gpu.json
#      (CODEC=1)
#   3. paper-size stage LM training throughput and MFU: $OUT/lm_mfu_gpu.json
set -u
OUT=${OUT:-/tmp/accelerator_out}
W2V_SECONDS=${W2V_SECONDS:-140}
W2V_VARIANTS=${W2V_VARIANTS:-"default:"}   # "name:binding,binding name2:..." (--gin.NAME=V)
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
  'optax', optax.__version__, jax.devices())" || exit 1

count=$(echo $W2V_VARIANTS | wc -w)
echo "== w2v-BERT small: $count variant(s), $W2V_SECONDS s each, in parallel"
for variant in $W2V_VARIANTS; do
  name=${variant%%:*}; bindings=${variant#*:}
  flags=(); IFS=',' read -ra parts <<< "$bindings"
  for b in "${parts[@]}"; do [ -n "$b" ] && flags+=("--gin.$b"); done
  XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.8 / $count, 2))") \
    timeout $((W2V_SECONDS + 900)) python3 benchmarks/w2v_bert_learning.py train \
    --audio_dir .gpu/w2v_train --export_dir "/tmp/w2v_$name" --gin_file "${W2V_GIN:-w2v_bert/small.gin}" \
    --minutes "$(python3 -c "print($W2V_SECONDS / 60)")" --log_every 250 "${flags[@]}" \
    2>&1 | grep -v "Path not found" | sed "s/^/[$name] /" &
done
wait
python3 - "$OUT" $W2V_VARIANTS <<'PY'
import json, os, shutil, sys
out, variants = sys.argv[1], [v.split(":")[0] for v in sys.argv[2:]]
reports = {}
for name in variants:
  path = f"/tmp/w2v_{name}/learning.json"
  if os.path.exists(path):
    reports[name] = json.load(open(path))
score = lambda r: sum(row["code_perplexity"] for row in r["curve"][-3:]) / max(
    1, len(r["curve"][-3:]))
for name, r in reports.items():
  last = r["curve"][-1] if r["curve"] else {}
  print(f"{name:12s} steps {r['steps']:6d}  perplexity(last 3) {score(r):8.2f}  "
        f"mlm {last.get('mlm_accuracy')}  contrastive {last.get('contrastive_accuracy')}")
json.dump({"selection": "highest mean code_perplexity over the last three logged steps",
           "variants": reports}, open(os.path.join(out, "w2v_variants.json"), "w"), indent=1)
if reports:
  best = max(reports, key=lambda n: score(reports[n]))
  print("exported:", best)
  shutil.copytree(f"/tmp/w2v_{best}", os.path.join(out, "w2v"))
PY
if [ "${CODEC:-0}" = 1 ]; then
  echo "== codec speed, paper"
  MUSICLM_JAX_DEBIAN_CACHE=.gpu/debian timeout 120 python3 benchmarks/codec_speed.py \
    --repeats 5 --out "$OUT/codec_speed_gpu.json" 2>&1 | grep -v "Path not found"
fi
echo "== LM MFU, paper"
timeout ${LM_TIMEOUT:-120} python3 benchmarks/lm_mfu.py --steps 5 --out "$OUT/lm_mfu_gpu.json" \
  2>&1 | grep -v "Path not found\|Delay kernel"
ls -la "$OUT" "$OUT/w2v"
