"""Networks, training, evaluation and the shipped weights of facebeam."""
