"""A set of real photos with human descriptions, built from installed packages.

``python -m captioner.build.photos OUT_DIR`` reads GCompris's photos (Debian's ``gcompris-qt-data``),
the repository's ``examples/`` and scikit-image's photos, keeps those whose licence lets anyone use
and share them, and writes the photos, a manifest (file, descriptions, the described thing as a
WordNet noun, source, author, licence) and a train / held-out split in COCO captions format. The
calibration benchmark and training's benchmarks evaluate on it.
"""
