"""Evaluation: embedders (musicnn, MuLan), FAD, KLD, MCC, and the listening test."""
