r"""audiolm-pytorch SemanticTransformer speed: training tokens/s and sampling tokens/s.

The reference side of benchmarks/lm_speed.py: the same size (dim 512, depth 6, 8 heads,
dim_head 64, 1024 semantic tokens, length 512, batch 8), float32 on CPU, measured with the
package's own code paths so both numbers come from the same machine in the same run.

  - training: SemanticTransformerWrapper(return_loss=True) (next-token cross-entropy over
    batch 8 x 512 random ids, plus the EOS the wrapper appends), backward, AdamW(1e-4) step;
    2 warm-up steps, then --steps timed; tokens/s = 8 * 512 * steps / time.
  - sampling: SemanticTransformerWrapper.generate from an empty prompt to 512 tokens at batch
    1 and 8, temperature 1.0, default filter (top 10%), use_kv_cache=True; one short
    warm-up, then --repeats timed; tokens/s = batch * 512 * repeats / time.

It runs in its own virtualenv (audiolm-pytorch needs torch + torchaudio + fairseq), not the
project's:

  python3 -m venv /work/bench-venv
  /work/bench-venv/bin/pip install torch==2.9.1 torchvision==0.24.1
  /work/bench-venv/bin/pip install torch==2.9.1 'torchaudio==2.9.*'
  /work/bench-venv/bin/pip install torch==2.9.1 torchaudio==2.9.1 audiolm-pytorch==2.4.0
  /work/bench-venv/bin/python benchmarks/audiolm_pytorch_speed.py [--steps 5] [--repeats 1]

fairseq 0.12.2 does not import on Python >= 3.11 (dataclass mutable-default error); it is only
needed for HubertWithKmeans / FairseqVQWav2Vec, so a stub module stands in when it fails.
Nothing is downloaded: the T5 config lookup the constructor makes is answered from a seeded
cache (text conditioning is off).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import os
import platform
import sys
import time
import types

os.environ.setdefault("TQDM_DISABLE", "1")  # generate() wraps its loop in tqdm
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast on any hub lookup

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine  # noqa: E402  (plain Python: no jax needed)

VOCAB, LENGTH, BATCH = 1024, 512, 8
SIZE = {"dim": 512, "depth": 6, "heads": 8, "dim_head": 64, "num_semantic_tokens": VOCAB,
        "length": LENGTH, "batch": BATCH}


def import_audiolm():
  """Imports audiolm_pytorch, stubbing fairseq if it cannot be imported."""
  stubbed = False
  try:
    import fairseq  # noqa: F401
  except Exception:  # pylint: disable=broad-except
    for name in [m for m in sys.modules if m == "fairseq" or m.startswith("fairseq.")]:
      del sys.modules[name]
    sys.modules["fairseq"] = types.ModuleType("fairseq")
    stubbed = True
  import audiolm_pytorch
  from audiolm_pytorch import t5
  # SemanticTransformer evaluates get_encoded_dim(t5_name) even when cond_dim is given (it is
  # unused then): seed its cache so no T5 config is fetched from the hub.
  t5.T5_CONFIGS.setdefault(t5.DEFAULT_T5_NAME, {"config": types.SimpleNamespace(d_model=768)})
  return audiolm_pytorch, stubbed


def versions() -> dict:
  out = {}
  for pkg in ["torch", "torchaudio", "audiolm-pytorch", "einops", "hyper-connections",
              "fairseq", "numpy"]:
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = None
  out["python"] = platform.python_version()
  return out


def make_wrapper(alm, seed: int):
  torch.manual_seed(seed)
  transformer = alm.SemanticTransformer(
      num_semantic_tokens=VOCAB, dim=SIZE["dim"], depth=SIZE["depth"], heads=SIZE["heads"],
      dim_head=SIZE["dim_head"], has_condition=False, cond_drop_prob=0.,
      cond_dim=SIZE["dim"])
  # plain next-token LM: no random attention masking, no consecutive-duplicate removal
  return alm.SemanticTransformerWrapper(transformer=transformer, wav2vec=None,
                                        unique_consecutive=False, mask_prob=0.)


def bench_training(alm, steps: int) -> tuple[float, int]:
  wrapper = make_wrapper(alm, 0)
  wrapper.train()
  opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-4)
  ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = wrapper(semantic_token_ids=ids, return_loss=True)
    loss.backward()
    opt.step()
    return loss

  for _ in range(2):  # warm-up
    step()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  elapsed = time.perf_counter() - start
  assert torch.isfinite(loss), loss
  num_params = sum(p.numel() for p in wrapper.parameters())
  return BATCH * LENGTH * steps / elapsed, num_params


def bench_sampling(alm, batch_size: int, repeats: int, use_kv_cache: bool) -> float:
  wrapper = make_wrapper(alm, 1)
  with torch.no_grad():  # random weights: keep EOS out so every run yields all 512 tokens
    wrapper.transformer.to_logits.bias[wrapper.eos_id] = -1e9
  kwargs = {"use_kv_cache": True} if use_kv_cache else {}
  sample = lambda n: wrapper.generate(max_length=n, batch_size=batch_size, temperature=1.0,
                                      **kwargs)
  sample(16)  # warm-up
  start = time.perf_counter()
  for _ in range(repeats):
    out = sample(LENGTH)
  elapsed = time.perf_counter() - start
  assert out.shape == (batch_size, LENGTH) and (out >= 0).all(), out.shape
  return batch_size * LENGTH * repeats / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  torch.set_num_threads(os.cpu_count())
  torch.set_default_dtype(torch.float32)
  alm, stubbed = import_audiolm()
  gen_src = inspect.getsource(alm.SemanticTransformerWrapper)
  use_kv_cache = "use_kv_cache" in gen_src

  t0 = time.perf_counter()
  train, num_params = bench_training(alm, args.steps)
  results = {
      "train_tokens_per_s": train,
      "sample_tokens_per_s_batch1": bench_sampling(alm, 1, args.repeats, use_kv_cache),
      "sample_tokens_per_s_batch8": bench_sampling(alm, BATCH, args.repeats, use_kv_cache),
  }
  notes = [
      f"generate() use_kv_cache={use_kv_cache} (package default True; the cache skips "
      "recomputing past keys/values, but each step still re-embeds the whole prefix and "
      "rebuilds the full n x n relative-position bias)." if use_kv_cache else
      "generate() has no use_kv_cache argument in this version: full recompute each step.",
      "Package defaults otherwise: flash_attn=False (math attention + MLP relative position "
      "bias), 4 hyper-connection residual streams, value residuals, single shared KV head, "
      "GEGLU feed-forward, generate filter_thres=0.9 (top 10%).",
      "Training through SemanticTransformerWrapper(return_loss=True) with "
      "unique_consecutive=False and mask_prob=0 (defaults True / 0.15); the wrapper appends "
      "EOS, so 513 positions are processed per row but 512 are counted.",
      "Sampling: EOS logit bias set to -1e9 on the random model so generation never stops "
      "early; empty prompt (start token only).",
  ]
  if stubbed:
    notes.append("fairseq failed to import (Python 3.11 dataclass error) and was replaced "
                 "by an empty stub module; it is unused by SemanticTransformer.")
  report = {"benchmark": "audiolm_pytorch_speed", "package_versions": versions(),
            "machine": machine.describe(torch_threads=torch.get_num_threads()), "size": dict(SIZE, params=num_params),
            "dtype": "float32", "steps": args.steps, "repeats": args.repeats,
            "results": results, "notes": " ".join(notes),
            "wall_s": time.perf_counter() - t0,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 "audiolm_pytorch_speed_cpu.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  for name, value in results.items():
    print(f"{name:30s} {value:10.1f}")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
