"""The ground floor: helpers every layer may use and that import nothing else of the package.

- :mod:`~favit_probsparse.utils.image_stats`: per-dataset normalization mean/std (data transforms, model configs).
- :mod:`~favit_probsparse.utils.io`: atomic file writes (temporary file in the same folder, then rename).
- :mod:`~favit_probsparse.utils.provenance`: where and when a number was made (CPU and its flags, commit, date).
"""
