"""Symbolic music (music21 corpus) rendered with General MIDI SoundFonts: the source of
the project's captioned music set."""
