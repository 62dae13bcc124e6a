"""Text model family: acgvoc2vec sentence encoders."""
