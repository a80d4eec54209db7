"""w2v-BERT (Chung et al. 2021): the self-supervised audio model behind MusicLM's semantic tokens.

A convolutional feature encoder turns 16 kHz audio into 25 frames a second; a conformer
"contrastive module" learns, from masked input, to pick each masked frame's quantized target
among distractors; a second conformer stack, the "MLM module", predicts the quantizer's token
ids of the masked frames. MusicLM's semantic tokens are k-means cluster ids of one MLM layer's
embeddings (`tokenizer.SemanticTokenizer`).
"""
