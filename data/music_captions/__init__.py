"""`music_captions`: the project's captioned music set, rendered from music21's corpus.

Build with `musiclm-jax build-data music_captions --config=small_24khz --data_dir=OUT` (or
`tfds build data/music_captions` where apache_beam is installed); see
music_captions_dataset_builder.py.
"""
