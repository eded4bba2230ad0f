"""Beam transforms of facebeam: read sources, find faces, run the models, write Parquet."""
