"""SoundStream, the neural audio codec whose RVQ codes are MusicLM's acoustic tokens.

A causal SEANet encoder turns 24 kHz audio into 50 embeddings a second, a residual vector
quantizer turns each into 12 codes, and the mirrored decoder turns them back into audio.
It is trained as a GAN: an STFT discriminator and three multi-scale waveform
discriminators, with hinge adversarial, feature-matching and multi-scale spectral losses.
"""
