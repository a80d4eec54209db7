#!/bin/bash
# The device checks for a GPU machine, in one call. Its image has jax, flax, optax,
# numpy, safetensors and torch, but no TensorFlow, SeqIO, gin-config, soundfile or soxr, and
# no network. Run from the repository root with what benchmarks/prepare_accelerator.sh put
# in .whl (wheels) and .gpu (audio); results go to $OUT (default /tmp/accelerator_out), at
# most 8 files, so that a short remote run returns everything in one transfer:
#   1. w2v-BERT `small` self-supervised training on the wesnoth training tracks,
#      W2V_SECONDS each (0: none, the codec gets the GPU alone), one or several gin
#      variants at once on the one GPU
#      (W2V_VARIANTS="name:Binding=value,Binding=value name2:...", default: small.gin as
#      is): $OUT/w2v/ holds the export (learning.json + float16 shards) of the variant whose
#      codebook stayed most used (highest code perplexity over its last three logged steps:
#      a collapsed codebook has ~1 and trivial tasks); every curve is in results.tar.
#   2. at the same time, SoundStream `small` GAN training for CODEC_MINUTES:
#      $OUT/codec.tar, a float16 codec bundle with training.json, for
#      `benchmarks/codec_quality.py --bundle` here (Opus is not on that machine).
#   3. CODEC_SPEED=1: SoundStream `paper` encode + decode speed; LM_MFU=1: paper-size stage
#      LM train step throughput and MFU, with einsum attention, with cuDNN's fused one, and
#      with cuDNN's and the chunked loss; GEN_SPEED=1: a 30 s generation at paper size,
#      batch 1, all three stages and the codec decoder (random weights: speed does not
#      depend on training; target under 30 s).
#      Their JSONs go into $OUT/results.tar.
# Import the w2v-BERT export with `benchmarks/w2v_bert_learning.py import`, then run
# `musiclm-jax semantic fit-kmeans` and benchmarks/semantic_quality.py on it.
set -u
OUT=${OUT:-/tmp/accelerator_out}
W2V_SECONDS=${W2V_SECONDS:-330}
W2V_VARIANTS=${W2V_VARIANTS:-"default:"}
CODEC_MINUTES=${CODEC_MINUTES:-5}   # whole minutes, compilation included
# (W2V_GIN and CODEC_SIZE, for trying the script on a CPU: w2v_bert/tiny.gin, cpu)
RESULTS=/tmp/accelerator_results
mkdir -p "$OUT" "$RESULTS"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
  'optax', optax.__version__, jax.devices())" || exit 1

[ "$W2V_SECONDS" = 0 ] && W2V_VARIANTS=""
jobs=$(( $(echo $W2V_VARIANTS | wc -w) + 1 ))
fraction=$(python3 -c "print(round(0.85 / $jobs, 2))")   # of GPU memory per process
echo "== w2v-BERT small ($W2V_SECONDS s) and SoundStream small ($CODEC_MINUTES min) at once"
for variant in $W2V_VARIANTS; do
  name=${variant%%:*}; bindings=${variant#*:}
  flags=(); IFS=',' read -ra parts <<< "$bindings"
  for b in "${parts[@]}"; do [ -n "$b" ] && flags+=("--gin.$b"); done
  # The timeout is a safety net only: start-up (decoding, compiling) is not in the budget.
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout $((W2V_SECONDS + 900)) \
    python3 benchmarks/w2v_bert_learning.py train --audio_dir .gpu/train_24k \
    --export_dir "/tmp/w2v_$name" --gin_file "${W2V_GIN:-w2v_bert/small.gin}" \
    --log_every 250 \
    --minutes "$(python3 -c "print($W2V_SECONDS / 60)")" "${flags[@]}" 2>&1 \
    | grep -v "Path not found" | sed "s/^/[w2v $name] /" &
done
if [ "$CODEC_MINUTES" != 0 ]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout $((CODEC_MINUTES * 60 + 900)) \
    python3 benchmarks/codec_quality.py --size "${CODEC_SIZE:-small}" \
    --train_minutes "$CODEC_MINUTES" \
    --eval_clips 0 --train_audio_dir .gpu/train_24k --bundle_out /tmp/codec \
    --bundle_dtype float16 --log_every 500 2>&1 | grep -v "Path not found" \
    | sed "s/^/[codec] /" &
fi
wait
[ -d /tmp/codec ] && tar cf "$OUT/codec.tar" -C /tmp codec
python3 - "$OUT" "$RESULTS" $W2V_VARIANTS <<'PY'
import json, os, shutil, sys
out, results, variants = sys.argv[1], sys.argv[2], [v.split(":")[0] for v in sys.argv[3:]]
reports = {}
for name in variants:
  path = f"/tmp/w2v_{name}/learning.json"
  if os.path.exists(path):
    reports[name] = json.load(open(path))
score = lambda r: sum(row["code_perplexity"] for row in r["curve"][-3:]) / max(
    1, len(r["curve"][-3:]))
for name, r in reports.items():
  last = r["curve"][-1] if r["curve"] else {}
  print(f"{name:12s} steps {r.get('steps', 0):6d}  perplexity(last 3) {score(r):8.2f}  "
        f"mlm {last.get('mlm_accuracy')}  contrastive {last.get('contrastive_accuracy')}  "
        f"exported {r.get('exported', False)}")
json.dump({"selection": "highest mean code_perplexity over the last three logged steps",
           "variants": reports}, open(os.path.join(results, "w2v_variants.json"), "w"),
          indent=1)
exported = [n for n in reports if reports[n].get("exported")]
if exported:
  best = max(exported, key=lambda n: score(reports[n]))
  print("w2v export:", best)
  shutil.copytree(f"/tmp/w2v_{best}", os.path.join(out, "w2v"))
PY
# results.tar grows after each part, so a call stopped at its limit still returns what ran.
tar cf "$OUT/results.tar" -C "$RESULTS" .
if [ "${CODEC_SPEED:-0}" = 1 ]; then
  echo "== codec speed, paper"
  MUSICLM_JAX_DEBIAN_CACHE=.gpu/debian timeout 150 python3 benchmarks/codec_speed.py \
    --repeats 5 --out "$RESULTS/codec_speed_gpu.json" 2>&1 | grep -v "Path not found"
  tar rf "$OUT/results.tar" -C "$RESULTS" codec_speed_gpu.json
fi
if [ "${LM_MFU:-0}" = 1 ]; then
  echo "== LM MFU, paper: einsum attention, then cuDNN's fused attention"
  timeout 150 python3 benchmarks/lm_mfu.py --steps 5 --out "$RESULTS/lm_mfu_gpu.json" 2>&1 \
    | grep -v "Path not found"
  tar rf "$OUT/results.tar" -C "$RESULTS" lm_mfu_gpu.json
  timeout 150 python3 benchmarks/lm_mfu.py --steps 5 --out "$RESULTS/lm_mfu_cudnn_gpu.json" \
    --gin "DecoderConfig.attention_implementation = 'cudnn'" \
    --gin "DecoderConfig.attention_dropout_rate = 0.0" 2>&1 | grep -v "Path not found"
  tar rf "$OUT/results.tar" -C "$RESULTS" lm_mfu_cudnn_gpu.json
  # The same with the chunked loss (the stage's float32 logits never whole).
  timeout 150 python3 benchmarks/lm_mfu.py --steps 5 \
    --out "$RESULTS/lm_mfu_cudnn_chunked_gpu.json" \
    --gin "DecoderConfig.attention_implementation = 'cudnn'" \
    --gin "DecoderConfig.attention_dropout_rate = 0.0" \
    --gin "DecoderOnlyLMModel.loss_chunk_length = 512" 2>&1 | grep -v "Path not found"
  tar rf "$OUT/results.tar" -C "$RESULTS" lm_mfu_cudnn_chunked_gpu.json
fi
if [ "${GEN_SPEED:-0}" = 1 ]; then
  echo "== generation speed, paper, 30 s at batch 1"
  timeout 300 python3 benchmarks/generation_speed.py --size paper --seconds 30 --batch 1 \
    --out "$RESULTS/generation_speed_paper_gpu.json" 2>&1 | grep -v "Path not found"
  tar rf "$OUT/results.tar" -C "$RESULTS" generation_speed_paper_gpu.json
fi
ls -la "$OUT" "$OUT/w2v" 2>&1
