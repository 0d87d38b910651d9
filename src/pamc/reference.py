"""Facts of the reference protocol (Cole et al. 2021, kept by Kim et al. 2023) that several parts of
pamc share, written once here."""

#: The seed of the reference code's label observation and train/val split; the default wherever
#: pamc draws observed labels or splits a dataset, so published numbers are reproduced exactly.
REFERENCE_SEED = 1200
