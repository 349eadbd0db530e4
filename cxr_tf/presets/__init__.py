"""Presets embedded in the package: one folder per preset (``NAME/config.json``, ``metadata.json``,
``model.weights.h5``, ``MODEL_CARD.md``), found by ``preset:NAME`` after the user cache.

``remote.json`` maps names of presets published elsewhere to ``{"url", "sha256"}``; they are
downloaded once into the user cache on first use. This package holds data only: the loader is
:mod:`cxr_tf.models.presets`.
"""
