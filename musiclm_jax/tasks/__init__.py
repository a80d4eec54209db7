"""SeqIO tasks, mixtures and feature converters. Importing this package registers the tasks."""

from musiclm_jax.tasks import feature_converters  # noqa: F401
from musiclm_jax.tasks import synthetic  # noqa: F401  (registers 'synthetic_arpeggios')
from musiclm_jax.tasks import audio  # noqa: F401  (audio crop tasks: register_audio_crop_task)
from musiclm_jax.tasks import stages  # noqa: F401  (LM stages over token shards)
from musiclm_jax.tasks import mixtures  # noqa: F401  (register_mixture)
