"""`musiccaps`: the public MusicCaps CSV joined with a folder of already-downloaded clips.

See musiccaps_dataset_builder.py.
"""
