"""Reading users' files safely (descriptors, ground truth, annotations, pickles, .npy/.npz),
the training set and its neighbour lists, and the built-in synthetic benchmark."""
