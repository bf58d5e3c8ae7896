"""What goes into a store: the source scans and what is known of them.

- :mod:`.catalog`: listing a source folder (one entry per file, or per frame of
  a multi-frame DICOM) and reading one scan from its URL (:func:`read_image`).
- :mod:`.labels`: the labels files of ChestX-ray8, CheXpert and MIMIC-CXR, read
  into one row of finding columns per scan.
- :mod:`.header`: a DICOM header's columns, with identifiers as keyed pseudonyms.

The store package (:mod:`xraycore.store`) keeps what knows the store's bytes;
this package reads the inputs through its :class:`~xraycore.store.storage.Storage`
and writes rows in its columns (:mod:`xraycore.store.columns`), never the other
way round (as pangeo-forge-recipes keeps ``patterns.py`` and ``openers.py`` apart
from ``storage.py``).
"""
