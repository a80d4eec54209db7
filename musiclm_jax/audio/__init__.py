"""Audio in and out: reading any common format, resampling, validation, features."""
