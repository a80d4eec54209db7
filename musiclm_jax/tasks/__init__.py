"""SeqIO tasks, mixtures and feature converters. Importing this package registers the tasks."""

from musiclm_jax.tasks import feature_converters  # noqa: F401
from musiclm_jax.tasks import synthetic  # noqa: F401  (registers 'synthetic_arpeggios')
