"""MuLan: joint music-text embedding (audio tower, BERT text tower, contrastive training)
and the MuLan tokenizer (residual VQ of the embeddings)."""
