"""The joint image–text space: text in zh, ja or en compared with pictures directly.

The illust2vec image tower (EfficientNet-Lite0, ImageNet weights, locked) and the multilingual acgvoc2vec text
tower (locked) each get a small projection into one space, trained contrastively on openclipart's English titles,
descriptions and keywords (`train.py`); the multilingual text tower carries Japanese and Chinese into it. Exported
as one SavedModel `joint` with a text signature and an image signature (`export.py`); `defaults.py` builds it
in `acg2vec models build-defaults`; `data.py` reads the texts. May import TensorFlow, Keras and the rest of
acg2vec_models; never the server.
"""
