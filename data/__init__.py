"""The project's TFDS dataset builders, one folder each (`NAME/NAME_dataset_builder.py`, the
layout `tfds build data/NAME` reads). Installed as the package `musiclm_jax.datasets`
(setup.py), through which the library imports them (`musiclm_jax.tasks.builders`)."""
