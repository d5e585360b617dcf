"""Input: tf.data over TFDS datasets and image folders (`pipeline`), each epoch's resumable
record order (`records`), image transforms and statistics, and the embedded cluttered-digits
dataset (`cluttered_digits`)."""
