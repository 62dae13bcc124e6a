"""acg2vec model code: architectures, training, SavedModel export and importers of published weights."""
