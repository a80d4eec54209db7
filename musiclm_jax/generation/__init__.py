"""Text-to-music generation: the chained stages and their windows."""
