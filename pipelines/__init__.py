"""Entry points of facebeam: the analyze pipeline, its summary, and the command line."""
