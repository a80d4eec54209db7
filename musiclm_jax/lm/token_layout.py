"""The token streams of MusicLM's three LM stages: vocabularies, rates, lengths.

`TokenLayout` says how MuLan, semantic and acoustic tokens map into each stage's prefix and
target vocabularies (see tasks/stages.py for the mapping) and how long a crop's streams are.
It has no TensorFlow in it, so generation can use it without importing the data pipeline.
"""

from __future__ import annotations

import dataclasses

import gin

STAGES = ("semantic", "coarse", "fine")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Rates and vocabularies of the token streams (defaults: the paper's).

  Attributes:
    mulan_levels, mulan_codes: MuLan RVQ levels x codes per level.
    semantic_codes, semantic_rate: k-means clusters and tokens per second.
    acoustic_levels, acoustic_codes, acoustic_rate: SoundStream RVQ and frames per second.
    coarse_levels: Qc, the acoustic levels the coarse stage predicts.
  """
  mulan_levels: int = 12
  mulan_codes: int = 1024
  semantic_codes: int = 1024
  semantic_rate: int = 25
  acoustic_levels: int = 12
  acoustic_codes: int = 1024
  acoustic_rate: int = 50
  coarse_levels: int = 4

  def __post_init__(self):
    if self.acoustic_rate % self.semantic_rate:
      raise ValueError(f"acoustic_rate {self.acoustic_rate} must be a multiple of "
                       f"semantic_rate {self.semantic_rate} to keep crops aligned")
    if not 0 < self.coarse_levels < self.acoustic_levels:
      raise ValueError(f"coarse_levels={self.coarse_levels} must be in (0, "
                       f"{self.acoustic_levels})")

  def vocab_sizes(self, stage: str) -> tuple[int, int]:
    """(prefix vocabulary, target vocabulary) of a stage."""
    mulan = self.mulan_levels * self.mulan_codes
    coarse = self.coarse_levels * self.acoustic_codes
    return {"semantic": (mulan, self.semantic_codes),
            "coarse": (mulan + self.semantic_codes, coarse),
            "fine": (coarse, (self.acoustic_levels - self.coarse_levels) * self.acoustic_codes),
            }[stage]

  def lengths(self, stage: str, crop_seconds: float) -> tuple[int, int]:
    """(prefix length, target length) of a stage for crops of `crop_seconds`."""
    semantic = int(round(crop_seconds * self.semantic_rate))
    acoustic = semantic * (self.acoustic_rate // self.semantic_rate)
    coarse = acoustic * self.coarse_levels
    return {"semantic": (self.mulan_levels, semantic),
            "coarse": (self.mulan_levels + semantic, coarse),
            "fine": (coarse, acoustic * (self.acoustic_levels - self.coarse_levels))}[stage]
