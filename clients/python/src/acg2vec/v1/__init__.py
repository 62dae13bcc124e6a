"""Generated from protos/acg2vec/v1 by scripts/generate_protos.py; do not edit."""
