"""From masks to findings: tumour shape features and their association with
the genomic subtypes of data.csv, as Buda et al. 2019 (arXiv 1906.03720)
analyse them, from manual masks and from a model's cross-validated masks.

`shape` computes the features, `stats` the tests, `cohort` reads the masks
and data.csv and writes the tables; `python -m lgg_jax.radiogenomics` runs it.
"""
