"""Image model family: DeepDanbooru-style tagger, illust2vec encoder, deepix heads."""
