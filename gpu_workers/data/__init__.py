"""Corpora, synthetic retrieval samples and the documents evaluations read."""
