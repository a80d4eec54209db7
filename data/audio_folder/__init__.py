"""`audio_folder`: any folder tree of audio files as a TFDS dataset of fixed-length clips.

Build with `tfds build data/audio_folder --config=24khz --manual_dir=FOLDER`; see
audio_folder_dataset_builder.py.
"""
