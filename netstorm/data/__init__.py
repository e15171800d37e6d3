"""Package data: the reference network measurements (see ``../shared/data/README.md``)."""
