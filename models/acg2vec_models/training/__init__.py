"""Training the image models from a JSONL manifest: tagger (multi-label) and deepix (multi-task).

See trainer.py for the loop, backbones.py for where encoders come from, docs/image-models-import-train.md.
"""
